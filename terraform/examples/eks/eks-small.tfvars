# A small EKS platform: 3 nodes (redis-ha's minimum), one NAT gateway, Argo CD with 2 replicas
# per server. terraform apply -var-file=eks-small.tfvars (two steps on a new cluster: README).
region             = "eu-west-1"
cluster_name       = "llmops-small"
kubernetes_version = "1.33"
topology           = "eks"
environments       = ["staging", "production"]

vpc_cidr           = "10.0.0.0/16"
availability_zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
single_nat_gateway = true

# The API's public endpoint, for the addresses Terraform and kubectl run from: replace the
# documentation range below with your egress CIDRs (or set false and run from the VPC).
endpoint_public_access       = true
endpoint_public_access_cidrs = ["203.0.113.0/24"]

node_instance_types = ["m6i.large"]
node_capacity_type  = "ON_DEMAND"
node_min_size       = 3
node_desired_size   = 3
node_max_size       = 5
node_disk_size_gib  = 80

log_retention_days = 30
