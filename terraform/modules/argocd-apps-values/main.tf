locals {
  root    = var.root_application
  project = var.platform_project

  root_application_name = local.root.metadata.name
  platform_project_name = local.project.metadata.name

  # Every object the bootstrap creates says so.
  managed_by = { "app.kubernetes.io/managed-by" = "terraform" }

  # The argocd-apps 2.x values (argoproj/argo-helm charts/argocd-apps/templates/
  # applications.yaml and projects.yaml): `applications` and `projects` are maps keyed by the
  # object's name; an entry holds `namespace`, `additionalLabels`, `additionalAnnotations`,
  # `finalizers`, and the spec's fields at its top level (`project`, `source`, ...).
  root_application_values = merge(
    {
      namespace             = var.argocd_namespace
      additionalLabels      = merge(try(local.root.metadata.labels, {}), local.managed_by)
      additionalAnnotations = try(local.root.metadata.annotations, {})
    },
    try(local.root.metadata.finalizers, null) == null ? {} : { finalizers = local.root.metadata.finalizers },
    local.root.spec,
  )

  platform_project_values = merge(
    {
      namespace             = var.argocd_namespace
      additionalLabels      = merge(try(local.project.metadata.labels, {}), local.managed_by)
      additionalAnnotations = try(local.project.metadata.annotations, {})
    },
    try(local.project.metadata.finalizers, null) == null ? {} : { finalizers = local.project.metadata.finalizers },
    local.project.spec,
  )
}
