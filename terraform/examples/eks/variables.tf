# --- AWS and the cluster ------------------------------------------------------------------

variable "region" {
  description = "The AWS region of the VPC and the EKS cluster."
  type        = string
  default     = "eu-west-1"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$", var.region))
    error_message = "region is an AWS region code such as \"eu-west-1\", not ${jsonencode(var.region)}."
  }
}

variable "cluster_name" {
  description = "The EKS cluster's name, also the VPC's and the prefix of the IAM roles' names."
  type        = string
  default     = "llmops"
  nullable    = false

  validation {
    # EKS allows 100 characters; the IAM role names built from it allow 64 in all.
    condition     = can(regex("^[a-z][-a-z0-9]{0,30}[a-z0-9]$", var.cluster_name))
    error_message = "cluster_name is 2 to 32 lowercase letters, digits and '-', starting with a letter (it prefixes IAM role names, 64 characters at most)."
  }
}

variable "kubernetes_version" {
  description = "The EKS Kubernetes minor version (\"1.33\"). Upgrading is one minor at a time."
  type        = string
  default     = "1.33"
  nullable    = false

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version is a Kubernetes minor version such as \"1.33\"."
  }
}

variable "topology" {
  description = "The platform topology on EKS: \"eks\" (Argo CD with redis-ha and 2 replicas per server) or \"eks-ha\" (3 replicas, API and repo servers autoscaled)."
  type        = string
  default     = "eks"
  nullable    = false

  validation {
    condition     = contains(["eks", "eks-ha"], var.topology)
    error_message = "This example builds an EKS cluster: topology is \"eks\" or \"eks-ha\" (\"kind\" is examples/kind's)."
  }
}

variable "environments" {
  description = "The environments to make namespaces for (llmops-<environment>), in promotion order."
  type        = list(string)
  default     = ["staging", "production"]
  nullable    = false

  validation {
    condition     = length(var.environments) > 0
    error_message = "environments names at least one environment."
  }
}

# --- Network --------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "The VPC's IPv4 range, /16 to /20: private subnets (nodes, pods) take a /4 slice each, public and intra (control plane) subnets a /8 slice each."
  type        = string
  default     = "10.0.0.0/16"
  nullable    = false

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && try(tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 20, false)
    error_message = "vpc_cidr is an IPv4 CIDR block from /16 to /20, such as \"10.0.0.0/16\"."
  }
}

variable "availability_zones" {
  description = "The availability zones of the subnets and nodes, in order (2 to 4, in the region). Named, not looked up: the subnets' ranges follow this order, so a zone AWS adds must never shift them."
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 4 && length(distinct(var.availability_zones)) == length(var.availability_zones)
    error_message = "availability_zones names 2 to 4 distinct zones (EKS needs subnets in 2 zones at least)."
  }

  validation {
    condition     = alltrue([for z in var.availability_zones : can(regex("^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9][a-z]$", z)) && startswith(z, var.region)])
    error_message = "availability_zones are zone names of the region ${var.region} (such as \"${var.region}a\"); got ${jsonencode(var.availability_zones)}."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for the whole VPC (cheaper; egress stops with its zone) instead of one per zone."
  type        = bool
  default     = true
  nullable    = false
}

variable "endpoint_public_access" {
  description = "Whether the Kubernetes API also has a public endpoint (the private one is always on). Off means Terraform, kubectl and the Helm provider run from inside the VPC (a bastion, a VPN, a runner there)."
  type        = bool
  default     = false
  nullable    = false
}

variable "endpoint_public_access_cidrs" {
  description = "The CIDR blocks allowed to reach the public API endpoint (your office's or runner's egress addresses); required when endpoint_public_access is on, and never the whole Internet."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for c in var.endpoint_public_access_cidrs : can(cidrhost(c, 0))])
    error_message = "endpoint_public_access_cidrs holds CIDR blocks such as \"203.0.113.0/24\"."
  }

  validation {
    condition     = alltrue([for c in var.endpoint_public_access_cidrs : !contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "endpoint_public_access_cidrs may not open the API to the whole Internet (0.0.0.0/0, ::/0): list your egress addresses, or keep the endpoint private."
  }

  validation {
    condition     = !var.endpoint_public_access || length(var.endpoint_public_access_cidrs) > 0
    error_message = "endpoint_public_access = true needs endpoint_public_access_cidrs (AWS would otherwise open the endpoint to 0.0.0.0/0)."
  }
}

variable "log_retention_days" {
  description = "Retention of the control plane's logs and of the VPC flow logs in CloudWatch, in days."
  type        = number
  default     = 90
  nullable    = false

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days is one of CloudWatch Logs' retention periods (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

# --- Nodes ----------------------------------------------------------------------------------

variable "node_instance_types" {
  description = "EC2 instance types of the managed node group, in order of preference."
  type        = list(string)
  default     = ["m6i.large"]
  nullable    = false

  validation {
    condition     = length(var.node_instance_types) > 0 && alltrue([for t in var.node_instance_types : can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", t))])
    error_message = "node_instance_types is a non-empty list of EC2 instance types such as \"m6i.large\"."
  }
}

variable "node_capacity_type" {
  description = "ON_DEMAND or SPOT capacity for the node group."
  type        = string
  default     = "ON_DEMAND"
  nullable    = false

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.node_capacity_type)
    error_message = "node_capacity_type is ON_DEMAND or SPOT."
  }
}

variable "node_min_size" {
  description = "The node group's minimum size; the topology's Argo CD (redis-ha, one Redis pod per node) needs 3."
  type        = number
  default     = 3
  nullable    = false

  validation {
    condition     = var.node_min_size >= 1 && floor(var.node_min_size) == var.node_min_size
    error_message = "node_min_size is a whole number of nodes, 1 or more."
  }
}

variable "node_max_size" {
  description = "The node group's maximum size."
  type        = number
  default     = 6
  nullable    = false

  validation {
    condition     = var.node_max_size >= var.node_min_size && floor(var.node_max_size) == var.node_max_size
    error_message = "node_max_size is a whole number, at least node_min_size."
  }
}

variable "node_desired_size" {
  description = "The node group's initial size (the module ignores later changes: the autoscaler owns it)."
  type        = number
  default     = 3
  nullable    = false

  validation {
    condition     = var.node_desired_size >= var.node_min_size && var.node_desired_size <= var.node_max_size
    error_message = "node_desired_size is between node_min_size and node_max_size."
  }
}

variable "node_disk_size_gib" {
  description = "The nodes' root volume (encrypted gp3), in GiB: images of the model servers are large."
  type        = number
  default     = 80
  nullable    = false

  validation {
    condition     = var.node_disk_size_gib >= 20 && var.node_disk_size_gib <= 1000
    error_message = "node_disk_size_gib is from 20 to 1000."
  }
}

variable "tags" {
  description = "Tags added to every AWS resource (over Project, ManagedBy and Cluster)."
  type        = map(string)
  default     = {}
  nullable    = false
}

# --- The bootstrap --------------------------------------------------------------------------

variable "argocd_chart_version" {
  description = "The argo-cd chart's exact version; null keeps platform-bootstrap's pin."
  type        = string
  default     = null

  validation {
    condition     = var.argocd_chart_version == null || can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.argocd_chart_version))
    error_message = "argocd_chart_version is an exact chart version such as \"10.1.1\", or null."
  }
}

variable "git_repository_username" {
  description = "User name for the platform repository's HTTPS credentials (only with git_repository_password); null means \"git\"."
  type        = string
  default     = null
}

variable "git_repository_password" {
  description = "A read-only access token for the platform repository, if it is private; give it as TF_VAR_git_repository_password, never in a tfvars file. null: a public repository, no Secret."
  type        = string
  default     = null
  sensitive   = true
}
