# An EKS cluster for the platform (VPC, cluster, one managed node group, the EBS CSI driver),
# then the one-time bootstrap (modules/platform-bootstrap): namespaces, Argo CD, the root
# application. Argo CD installs everything else from Git.
#
# Apply in two steps on a new cluster (terraform/README.md): the kubernetes and helm providers
# are configured from the cluster's outputs, which are unknown until the cluster exists:
#   terraform apply -var-file=eks-small.tfvars -target=module.vpc -target=module.eks
#   terraform apply -var-file=eks-small.tfvars

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}

# Short-lived tokens from `aws eks get-token` (the AWS CLI on PATH, with the same credentials as
# Terraform's), never a static kubeconfig.
provider "kubernetes" {
  host                   = module.eks.cluster_endpoint
  cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority_data)

  exec {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
  }
}

provider "helm" {
  kubernetes = {
    host                   = module.eks.cluster_endpoint
    cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority_data)

    exec = {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
    }
  }
}

# The zones named, checked to exist and be available in the account (zone names map to
# different physical zones per account, and some accounts lack some).
data "aws_availability_zones" "selected" {
  state = "available"

  filter {
    name   = "zone-name"
    values = var.availability_zones
  }

  lifecycle {
    postcondition {
      condition     = length(self.names) == length(var.availability_zones)
      error_message = "Not every zone of availability_zones is available to this account in ${var.region}: available are ${jsonencode(self.names)}."
    }
  }
}

data "aws_partition" "current" {}

locals {
  # In the order given: subnet i is in zone i (data.aws_availability_zones.selected checks them).
  azs = var.availability_zones

  tags = merge(
    {
      Project   = "llmops-platform"
      ManagedBy = "terraform"
      Cluster   = var.cluster_name
    },
    var.tags,
  )
}

################################################################################
# Network: private subnets for the nodes, public ones for load balancers, intra ones (no
# route out) for the control plane's network interfaces.
################################################################################

module "vpc" {
  #checkov:skip=CKV_TF_1: A Terraform Registry module is pinned by its version constraint (CKV_TF_2 passes); a registry source cannot name a commit hash (only a git:: source, outside the registry, can).
  source  = "terraform-aws-modules/vpc/aws"
  version = "~> 6.6"

  name = var.cluster_name
  cidr = var.vpc_cidr
  azs  = local.azs

  private_subnets = [for i, az in local.azs : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnets  = [for i, az in local.azs : cidrsubnet(var.vpc_cidr, 8, i + 48)]
  intra_subnets   = [for i, az in local.azs : cidrsubnet(var.vpc_cidr, 8, i + 52)]

  enable_nat_gateway     = true
  single_nat_gateway     = var.single_nat_gateway
  one_nat_gateway_per_az = !var.single_nat_gateway

  # The default security group denies everything; nothing uses it.
  manage_default_security_group = true

  # Flow logs of the whole VPC to CloudWatch.
  enable_flow_log                                 = true
  create_flow_log_cloudwatch_log_group            = true
  create_flow_log_cloudwatch_iam_role             = true
  flow_log_max_aggregation_interval               = 60
  flow_log_cloudwatch_log_group_retention_in_days = var.log_retention_days

  public_subnet_tags = {
    "kubernetes.io/role/elb" = 1
  }
  private_subnet_tags = {
    "kubernetes.io/role/internal-elb" = 1
  }

  tags = local.tags
}

################################################################################
# The cluster
################################################################################

module "eks" {
  #checkov:skip=CKV_TF_1: A Terraform Registry module is pinned by its version constraint (CKV_TF_2 passes); a registry source cannot name a commit hash (only a git:: source, outside the registry, can).
  source  = "terraform-aws-modules/eks/aws"
  version = "~> 21.19"

  name               = var.cluster_name
  kubernetes_version = var.kubernetes_version

  # The private endpoint always; a public one only for the CIDRs given (validated: never
  # 0.0.0.0/0). null leaves AWS's value when there is no public endpoint to restrict.
  endpoint_private_access      = true
  endpoint_public_access       = var.endpoint_public_access
  endpoint_public_access_cidrs = var.endpoint_public_access ? var.endpoint_public_access_cidrs : null

  # Kubernetes Secrets are envelope-encrypted with a customer managed KMS key with rotation:
  # the module's defaults (create_kms_key = true, encryption_config.resources = ["secrets"]),
  # deliberately not overridden here.

  # Every control plane log type, kept as long as the flow logs.
  enabled_log_types                      = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
  cloudwatch_log_group_retention_in_days = var.log_retention_days

  # The identity running Terraform administers the cluster through an access entry (the
  # bootstrap's Helm and Kubernetes providers need it); others get access entries of their own.
  enable_cluster_creator_admin_permissions = true
  authentication_mode                      = "API"

  vpc_id                   = module.vpc.vpc_id
  subnet_ids               = module.vpc.private_subnets
  control_plane_subnet_ids = module.vpc.intra_subnets

  addons = {
    coredns = {}
    eks-pod-identity-agent = {
      before_compute = true
    }
    kube-proxy = {}
    vpc-cni = {
      before_compute = true
    }
    # The gp3 StorageClass the bootstrap makes is this driver's.
    aws-ebs-csi-driver = {
      pod_identity_association = [{
        role_arn        = aws_iam_role.ebs_csi_driver.arn
        service_account = "ebs-csi-controller-sa"
      }]
    }
  }

  eks_managed_node_groups = {
    platform = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.node_instance_types
      capacity_type  = var.node_capacity_type

      min_size     = var.node_min_size
      max_size     = var.node_max_size
      desired_size = var.node_desired_size

      # IMDSv2 only, one hop: pods cannot reach the node's instance metadata (and its role);
      # they get AWS credentials from EKS Pod Identity.
      metadata_options = {
        http_endpoint               = "enabled"
        http_tokens                 = "required"
        http_put_response_hop_limit = 1
      }

      block_device_mappings = {
        xvda = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size           = var.node_disk_size_gib
            volume_type           = "gp3"
            encrypted             = true
            delete_on_termination = true
          }
        }
      }
    }
  }

  tags = local.tags
}

################################################################################
# The EBS CSI driver's role, assumed through EKS Pod Identity
################################################################################

data "aws_iam_policy_document" "ebs_csi_driver_assume" {
  statement {
    sid     = "EksPodIdentity"
    effect  = "Allow"
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "Service"
      identifiers = ["pods.eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "ebs_csi_driver" {
  name                 = "${var.cluster_name}-ebs-csi-driver"
  description          = "The EBS CSI driver's controller in ${var.cluster_name} (EKS Pod Identity)."
  assume_role_policy   = data.aws_iam_policy_document.ebs_csi_driver_assume.json
  max_session_duration = 3600
}

resource "aws_iam_role_policy_attachment" "ebs_csi_driver" {
  role       = aws_iam_role.ebs_csi_driver.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
}

################################################################################
# The bootstrap
################################################################################

module "platform" {
  source = "../../modules/platform-bootstrap"

  topology       = var.topology
  environments   = var.environments
  min_node_count = var.node_min_size

  root_application = yamldecode(file("${path.root}/../../../argocd/bootstrap/root.yaml"))
  platform_project = yamldecode(file("${path.root}/../../../argocd/bootstrap/project.yaml"))

  argocd_chart_version    = var.argocd_chart_version
  git_repository_username = var.git_repository_username
  git_repository_password = var.git_repository_password

  # Nodes, add-ons (the EBS CSI driver) and the creator's access entry first.
  depends_on = [module.eks]
}
