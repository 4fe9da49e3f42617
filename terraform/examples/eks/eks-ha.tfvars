# The highly available EKS platform: a NAT gateway per zone, more and larger nodes, Argo CD
# with 3 replicas per server and the API and repo servers autoscaled.
# terraform apply -var-file=eks-ha.tfvars (two steps on a new cluster: README).
region             = "eu-west-1"
cluster_name       = "llmops"
kubernetes_version = "1.33"
topology           = "eks-ha"
environments       = ["staging", "production"]

vpc_cidr           = "10.0.0.0/16"
availability_zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
single_nat_gateway = false

# Replace the documentation range with your egress CIDRs, or keep the endpoint private and run
# Terraform from inside the VPC.
endpoint_public_access       = true
endpoint_public_access_cidrs = ["203.0.113.0/24"]

node_instance_types = ["m6i.xlarge", "m7i.xlarge"]
node_capacity_type  = "ON_DEMAND"
node_min_size       = 3
node_desired_size   = 4
node_max_size       = 9
node_disk_size_gib  = 100

log_retention_days = 365
