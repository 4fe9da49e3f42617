# --- Topology (passed to modules/topology, which validates them in full) --------------------

variable "topology" {
  description = "Where the platform runs: \"kind\", \"eks\" or \"eks-ha\" (see modules/topology: Argo CD sizing, StorageClass, node needs)."
  type        = string
  nullable    = false

  validation {
    condition     = contains(["kind", "eks", "eks-ha"], var.topology)
    error_message = "topology must be one of \"kind\", \"eks\" or \"eks-ha\", not ${jsonencode(var.topology)}."
  }
}

variable "environments" {
  description = "The environments the ApplicationSet deploys, in promotion order; environment E gets the namespace llmops-E (validated by modules/topology)."
  type        = list(string)
  default     = ["staging", "production"]
  nullable    = false

  validation {
    condition     = length(var.environments) > 0 && alltrue([for e in var.environments : can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", e))])
    error_message = "environments is a non-empty list of DNS labels (each becomes the namespace llmops-<environment>)."
  }
}

variable "argocd_overrides" {
  description = "Overrides of the topology's Argo CD sizing (controller_replicas, server_replicas, repo_server_replicas, application_set_replicas, redis_ha, pdb, autoscaling_max_replicas); null attributes keep the topology's. Validated by modules/topology."
  type = object({
    controller_replicas      = optional(number)
    server_replicas          = optional(number)
    repo_server_replicas     = optional(number)
    application_set_replicas = optional(number)
    redis_ha                 = optional(bool)
    pdb                      = optional(bool)
    autoscaling_max_replicas = optional(number)
  })
  default  = {}
  nullable = false
}

variable "min_node_count" {
  description = "The fewest schedulable nodes the cluster keeps (a node group's min_size), checked by modules/topology against the sizing (redis-ha needs 3); null skips the check."
  type        = number
  default     = null

  validation {
    condition     = var.min_node_count == null || try(var.min_node_count >= 1, false)
    error_message = "min_node_count is 1 or more, or null."
  }
}

variable "storage_class_name" {
  description = "An existing StorageClass for the add-ons' volumes instead of the topology's (then none is created); null keeps the topology's."
  type        = string
  default     = null
}

variable "namespace_labels" {
  description = "Extra labels per platform namespace (keyed by namespace name), merged over the module's; pod-security.kubernetes.io/* are refused (modules/topology)."
  type        = map(map(string))
  default     = {}
  nullable    = false
}

# --- Argo CD ---------------------------------------------------------------------------------

variable "argocd_chart_repository" {
  description = "The Helm repository of the argo-cd and argocd-apps charts (argoproj/argo-helm's), or a mirror of it."
  type        = string
  default     = "https://argoproj.github.io/argo-helm"
  nullable    = false

  validation {
    condition     = can(regex("^(https|oci)://[^\\s]+$", var.argocd_chart_repository))
    error_message = "argocd_chart_repository is an https:// (or oci://) URL, not ${jsonencode(var.argocd_chart_repository)}."
  }
}

variable "argocd_chart_version" {
  description = "The argo-cd chart's exact version (10.1.1 ships Argo CD v3.4.4). null means the default. Bumping it is an upgrade of Argo CD: read the chart's upgrade notes first."
  type        = string
  default     = "10.1.1"
  nullable    = false

  validation {
    # An exact version, no range: a range would let a plain `terraform apply` upgrade Argo CD.
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.argocd_chart_version))
    error_message = "argocd_chart_version is an exact chart version such as \"10.1.1\" (no range, no leading v), not ${jsonencode(var.argocd_chart_version)}."
  }
}

variable "argocd_apps_chart_version" {
  description = "The argocd-apps chart's exact version. The root application and the project are rendered into its 2.x values (maps keyed by name). null means the default."
  type        = string
  default     = "2.0.5"
  nullable    = false

  validation {
    condition     = can(regex("^2\\.[0-9]+\\.[0-9]+$", var.argocd_apps_chart_version))
    error_message = "argocd_apps_chart_version is an exact 2.x version such as \"2.0.5\": the values this module writes are argocd-apps 2.x's (applications and projects as maps keyed by name; 1.x took lists). Got ${jsonencode(var.argocd_apps_chart_version)}."
  }
}

variable "argocd_release_name" {
  description = "The Helm release name of Argo CD; \"argocd\" gives the usual object names (argocd-server, argocd-repo-server, ...)."
  type        = string
  default     = "argocd"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.argocd_release_name)) && length(var.argocd_release_name) <= 53
    error_message = "argocd_release_name is a Helm release name: a DNS label of at most 53 characters."
  }
}

variable "argocd_extra_values" {
  description = "Further values documents (YAML text, e.g. file(\"argocd-values.yaml\")) for the argo-cd chart, applied after the topology's, so they win."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for v in var.argocd_extra_values : can(keys(yamldecode(v)))])
    error_message = "Each argocd_extra_values entry is a YAML mapping (chart values), not a list, a scalar or unparsable text."
  }
}

variable "helm_timeout_seconds" {
  description = "How long each Helm release may take to become ready (helm --timeout), in seconds."
  type        = number
  default     = 600
  nullable    = false

  validation {
    condition     = var.helm_timeout_seconds >= 60 && var.helm_timeout_seconds <= 3600
    error_message = "helm_timeout_seconds is from 60 to 3600."
  }
}

# --- The root application and its project (argocd/bootstrap/*.yaml, parsed) -------------------

variable "root_application" {
  description = "The root application (app of apps): yamldecode of argocd/bootstrap/root.yaml, an argoproj.io/v1alpha1 Application in the argocd namespace. Turned into argocd-apps values, and validated in full, by modules/argocd-apps-values."
  type        = any
  nullable    = false

  validation {
    condition     = try(var.root_application.kind == "Application", false)
    error_message = "root_application is an Argo CD Application document (yamldecode(file(\".../argocd/bootstrap/root.yaml\")))."
  }
}

variable "platform_project" {
  description = "The root application's AppProject: yamldecode of argocd/bootstrap/project.yaml. Turned into argocd-apps values, and validated in full, by modules/argocd-apps-values."
  type        = any
  nullable    = false

  validation {
    condition     = try(var.platform_project.kind == "AppProject", false)
    error_message = "platform_project is an Argo CD AppProject document (yamldecode(file(\".../argocd/bootstrap/project.yaml\")))."
  }
}

# --- Git repository credentials for Argo CD (optional) -------------------------------------------

variable "git_repository_url" {
  description = "The repository the credentials are for; null means the root application's spec.source.repoURL. Used only when a password or an SSH key is given."
  type        = string
  default     = null

  validation {
    condition     = var.git_repository_url == null || can(regex("^(https://[^\\s]+|ssh://[^\\s]+|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\\s]+)$", var.git_repository_url))
    error_message = "git_repository_url is an https://, ssh:// or user@host:path Git URL."
  }
}

variable "git_repository_username" {
  description = "The user name for HTTPS credentials (a GitHub token takes any non-empty one); null means \"git\"."
  type        = string
  default     = null

  validation {
    condition     = var.git_repository_username == null || try(length(var.git_repository_username) > 0, false)
    error_message = "git_repository_username is null or a non-empty user name."
  }
}

variable "git_repository_password" {
  description = "A password or access token (read-only scope) for the repository over HTTPS. When given, a repository Secret labelled argocd.argoproj.io/secret-type: repository is created in the argocd namespace. Pass it through TF_VAR_git_repository_password, never a committed tfvars file."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.git_repository_password == null || var.git_repository_ssh_private_key == null
    error_message = "Give git_repository_password (HTTPS) or git_repository_ssh_private_key (SSH), not both."
  }

  validation {
    condition     = var.git_repository_password == null || try(length(var.git_repository_password) > 0, false)
    error_message = "git_repository_password is null or non-empty."
  }

  validation {
    condition     = var.git_repository_password == null || startswith(coalesce(var.git_repository_url, "https://"), "https://")
    error_message = "A password authenticates over HTTPS: git_repository_url is an SSH URL, which needs git_repository_ssh_private_key instead."
  }
}

variable "git_repository_ssh_private_key" {
  description = "A private key (PEM or OpenSSH) of a read-only deploy key, for an SSH repository URL. When given, the repository Secret is created with it. Pass it through TF_VAR_git_repository_ssh_private_key."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.git_repository_ssh_private_key == null || can(regex("-----BEGIN [A-Z ]*PRIVATE KEY-----", var.git_repository_ssh_private_key))
    error_message = "git_repository_ssh_private_key is a PEM or OpenSSH private key (-----BEGIN ... PRIVATE KEY-----)."
  }

  validation {
    condition     = var.git_repository_ssh_private_key == null || (var.git_repository_url != null && !startswith(coalesce(var.git_repository_url, "https://"), "https://"))
    error_message = "An SSH key needs an SSH git_repository_url (ssh://... or git@host:path); the root application's https:// URL is not one."
  }
}
