output "namespaces" {
  description = "The namespaces created, name => labels."
  value       = { for name, ns in kubernetes_namespace_v1.this : name => ns.metadata[0].labels }
}

output "environment_namespaces" {
  description = "environment => its namespace (llmops-<environment>)."
  value       = module.topology.environment_namespaces
}

output "argocd_namespace" {
  description = "The namespace of Argo CD."
  value       = helm_release.argocd.namespace
}

output "argocd_release" {
  description = "The argo-cd Helm release: name, chart, version."
  value = {
    name    = helm_release.argocd.name
    chart   = helm_release.argocd.chart
    version = helm_release.argocd.version
  }
}

output "argocd_apps_release" {
  description = "The argocd-apps Helm release holding the root application and the platform project: name, version."
  value = {
    name    = helm_release.argocd_apps.name
    version = helm_release.argocd_apps.version
  }
}

output "root_application_name" {
  description = "The root application (app of apps) Argo CD now syncs; `argocd app get <name>` or `kubectl -n argocd get application <name>`."
  value       = module.argocd_apps_values.root_application_name
  depends_on  = [helm_release.argocd_apps]
}

output "platform_project_name" {
  description = "The AppProject of the root application and the add-ons."
  value       = module.argocd_apps_values.platform_project_name
  depends_on  = [helm_release.argocd_apps]
}

output "git_repository_secret_name" {
  description = "The Argo CD repository Secret, or null when no credentials were given."
  value       = one(kubernetes_secret_v1.git_repository[*].metadata[0].name)
}

output "storage_class_name" {
  description = "The StorageClass the add-ons' volumes use."
  value       = module.topology.storage_class.name
}

output "argocd_sizing" {
  description = "The Argo CD sizing applied (replicas, redis_ha, pdb, autoscaling_max_replicas)."
  value       = module.topology.argocd_sizing
}
