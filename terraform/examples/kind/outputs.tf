output "namespaces" {
  description = "The namespaces created, name => labels."
  value       = module.platform.namespaces
}

output "argocd_release" {
  description = "The argo-cd release: name, chart, version."
  value       = module.platform.argocd_release
}

output "root_application_name" {
  description = "The root application Argo CD syncs from argocd/apps."
  value       = module.platform.root_application_name
}

output "next_steps" {
  description = "How to watch Argo CD take over."
  value       = <<-EOT
    kubectl --context ${var.kube_context} -n argocd get applications -w
    kubectl --context ${var.kube_context} -n argocd port-forward svc/${module.platform.argocd_release.name}-server 8080:443
    kubectl --context ${var.kube_context} -n argocd get secret argocd-initial-admin-secret -o jsonpath='{.data.password}' | base64 -d
  EOT
}
