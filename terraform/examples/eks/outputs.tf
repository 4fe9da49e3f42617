output "cluster_name" {
  description = "The EKS cluster's name."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "The Kubernetes API endpoint."
  value       = module.eks.cluster_endpoint
}

output "kubeconfig_command" {
  description = "Adds the cluster to your kubeconfig."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${module.eks.cluster_name}"
}

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

output "storage_class_name" {
  description = "The default StorageClass of the add-ons' volumes."
  value       = module.platform.storage_class_name
}
