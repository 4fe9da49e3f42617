variable "kubeconfig_path" {
  description = "The kubeconfig holding the kind cluster's context (kind writes it to ~/.kube/config unless KUBECONFIG says otherwise)."
  type        = string
  default     = "~/.kube/config"
  nullable    = false

  validation {
    condition     = length(trimspace(var.kubeconfig_path)) > 0
    error_message = "kubeconfig_path is the path of a kubeconfig file."
  }
}

variable "kube_context" {
  description = "The kind cluster's kubeconfig context: kind names it kind-<cluster name> (`kind create cluster --name llmops` gives kind-llmops)."
  type        = string
  default     = "kind-llmops"
  nullable    = false

  validation {
    # A guard against bootstrapping a real cluster from the kind example by a wrong context.
    condition     = can(regex("^kind-[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.kube_context))
    error_message = "kube_context is a kind cluster's context, kind-<cluster name>; this example sizes Argo CD for kind and must not be pointed at another cluster (use examples/eks, or call modules/platform-bootstrap with your own topology)."
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
