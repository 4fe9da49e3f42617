terraform {
  # Validations that name another variable (the project against the root application, the
  # repository credentials against each other) are Terraform 1.9's.
  required_version = ">= 1.9.0"

  required_providers {
    # kubernetes_namespace_v1, kubernetes_secret_v1, kubernetes_storage_class_v1.
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.38"
    }
    # helm_release with `values` only (no `set`), so either major's syntax would do; 3.x is the
    # Plugin Framework one the callers configure with `kubernetes = { ... }`.
    helm = {
      source  = "hashicorp/helm"
      version = "~> 3.1"
    }
  }
}
