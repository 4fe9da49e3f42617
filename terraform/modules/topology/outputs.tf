output "topology" {
  description = "The topology these values are for."
  value       = var.topology
}

output "environments" {
  description = "The environments, in promotion order."
  value       = var.environments
}

output "argocd_namespace" {
  description = "The namespace Argo CD, its Applications, AppProjects and repository Secrets live in."
  value       = "argocd"
}

output "namespaces" {
  description = "Every namespace the bootstrap creates, name => labels (Pod Security Admission levels included)."
  value       = local.namespaces
}

output "namespace_names" {
  description = "The namespaces' names, sorted."
  value       = sort(keys(local.namespaces))
}

output "environment_namespaces" {
  description = "environment => the namespace the ApplicationSet deploys it into (llmops-<environment>)."
  value       = local.environment_namespaces
}

output "argocd_sizing" {
  description = "The Argo CD sizing after overrides: replicas per component, redis_ha, pdb, autoscaling_max_replicas (0: none)."
  value       = local.argocd_sizing

  precondition {
    condition     = local.argocd_sizing.autoscaling_max_replicas == 0 || local.argocd_sizing.autoscaling_max_replicas >= max(local.argocd_sizing.server_replicas, local.argocd_sizing.repo_server_replicas)
    error_message = "autoscaling_max_replicas (${local.argocd_sizing.autoscaling_max_replicas}) is below the API or repo server replicas (${local.argocd_sizing.server_replicas}, ${local.argocd_sizing.repo_server_replicas}), the autoscalers' minimum: raise it or set it to 0."
  }

  precondition {
    # A PodDisruptionBudget over a single replica blocks every node drain.
    condition     = !local.argocd_sizing.pdb || min(local.argocd_sizing.server_replicas, local.argocd_sizing.repo_server_replicas, local.argocd_sizing.application_set_replicas) >= 2
    error_message = "PodDisruptionBudgets (pdb) need 2 or more API server, repo server and ApplicationSet replicas, or every node drain blocks: raise them or set argocd_overrides.pdb = false."
  }
}

output "argocd_values" {
  description = "Values of the argo-cd Helm chart for this topology (an object: yamlencode it for helm_release)."
  value       = local.argocd_values
}

output "min_nodes" {
  description = "The fewest schedulable nodes this sizing needs (3 with redis-ha, else 1)."
  value       = local.min_nodes
}

output "storage_class" {
  description = "The StorageClass the add-ons use: name, whether the bootstrap creates it (create), and, for that, provisioner, parameters, reclaim_policy, volume_binding_mode and allow_volume_expansion."
  value       = local.storage_class
}
