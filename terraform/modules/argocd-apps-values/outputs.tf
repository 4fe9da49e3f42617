output "values" {
  description = "The argocd-apps chart's values: { projects = { <name> = ... }, applications = { <name> = ... } } (yamlencode it for helm_release)."
  value = {
    projects     = { (local.platform_project_name) = local.platform_project_values }
    applications = { (local.root_application_name) = local.root_application_values }
  }
}

output "root_application_name" {
  description = "The root application's name."
  value       = local.root_application_name
}

output "platform_project_name" {
  description = "The platform AppProject's name."
  value       = local.platform_project_name
}

output "repository_url" {
  description = "The repository the root application syncs from (its source's, or first source's, repoURL)."
  value       = try(local.root.spec.source.repoURL, local.root.spec.sources[0].repoURL, local.root.spec.sourceHydrator.drySource.repoURL)
}
