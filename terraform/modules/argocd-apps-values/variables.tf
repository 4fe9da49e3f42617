variable "argocd_namespace" {
  description = "The namespace of Argo CD, where the Application and the AppProject are created."
  type        = string
  default     = "argocd"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.argocd_namespace)) && length(var.argocd_namespace) <= 63
    error_message = "argocd_namespace is a namespace name (a DNS label), not ${jsonencode(var.argocd_namespace)}."
  }
}

variable "root_application" {
  description = <<-EOT
    The root application (app of apps): the parsed argocd/bootstrap/root.yaml, an
    argoproj.io/v1alpha1 Application in the Argo CD namespace. The argocd-apps 2.x chart's
    template renders metadata.labels, annotations, finalizers and the spec fields project,
    source, sources, destination, syncPolicy, revisionHistoryLimit, ignoreDifferences, info
    and sourceHydrator; anything else is refused here rather than dropped there.
  EOT
  type        = any
  nullable    = false

  validation {
    condition     = try(var.root_application.apiVersion == "argoproj.io/v1alpha1" && var.root_application.kind == "Application", false)
    error_message = "root_application is an argoproj.io/v1alpha1 Application (yamldecode of argocd/bootstrap/root.yaml); got apiVersion ${jsonencode(try(var.root_application.apiVersion, null))}, kind ${jsonencode(try(var.root_application.kind, null))}."
  }

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", var.root_application.metadata.name))
    error_message = "root_application.metadata.name is a Kubernetes object name (a lowercase DNS subdomain)."
  }

  validation {
    condition     = try(var.root_application.metadata.namespace, var.argocd_namespace) == var.argocd_namespace
    error_message = "root_application lives in Argo CD's namespace ${jsonencode(var.argocd_namespace)} (Argo CD watches Applications there), not ${jsonencode(try(var.root_application.metadata.namespace, null))}."
  }

  validation {
    condition     = try(length(setsubtract(keys(var.root_application.metadata), ["name", "namespace", "labels", "annotations", "finalizers"])) == 0, false)
    error_message = "root_application.metadata has keys the argocd-apps chart does not render: ${join(", ", try(tolist(setsubtract(keys(var.root_application.metadata), ["name", "namespace", "labels", "annotations", "finalizers"])), ["(no metadata)"]))}."
  }

  validation {
    condition     = try(length(setsubtract(keys(var.root_application.spec), ["project", "source", "sources", "destination", "syncPolicy", "revisionHistoryLimit", "ignoreDifferences", "info", "sourceHydrator"])) == 0, false)
    error_message = "root_application.spec has keys the argocd-apps 2.x chart does not render (they would be dropped): ${join(", ", try(tolist(setsubtract(keys(var.root_application.spec), ["project", "source", "sources", "destination", "syncPolicy", "revisionHistoryLimit", "ignoreDifferences", "info", "sourceHydrator"])), ["(no spec)"]))}."
  }

  validation {
    condition     = try(var.root_application.spec.project != "" && var.root_application.spec.destination != null && (can(var.root_application.spec.source.repoURL) || can(var.root_application.spec.sources[0].repoURL) || can(var.root_application.spec.sourceHydrator.drySource.repoURL)), false)
    error_message = "root_application.spec needs a project, a destination and a source (source, sources or sourceHydrator, with a repoURL)."
  }
}

variable "platform_project" {
  description = <<-EOT
    The platform's AppProject, the root application's project: the parsed
    argocd/bootstrap/project.yaml. The argocd-apps 2.x chart's template renders
    metadata.labels, annotations, finalizers and the spec fields description, sourceRepos,
    destinations, clusterResourceWhitelist/Blacklist, namespaceResourceWhitelist/Blacklist,
    orphanedResources, roles, syncWindows, signatureKeys, sourceNamespaces and
    permitOnlyProjectScopedClusters; anything else is refused here rather than dropped there.
  EOT
  type        = any
  nullable    = false

  validation {
    condition     = try(var.platform_project.apiVersion == "argoproj.io/v1alpha1" && var.platform_project.kind == "AppProject", false)
    error_message = "platform_project is an argoproj.io/v1alpha1 AppProject (yamldecode of argocd/bootstrap/project.yaml); got apiVersion ${jsonencode(try(var.platform_project.apiVersion, null))}, kind ${jsonencode(try(var.platform_project.kind, null))}."
  }

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", var.platform_project.metadata.name)) && try(var.platform_project.metadata.name != "default", false)
    error_message = "platform_project.metadata.name is a Kubernetes object name other than \"default\" (Argo CD owns the default project)."
  }

  validation {
    condition     = try(var.platform_project.metadata.namespace, var.argocd_namespace) == var.argocd_namespace
    error_message = "platform_project lives in Argo CD's namespace ${jsonencode(var.argocd_namespace)}, not ${jsonencode(try(var.platform_project.metadata.namespace, null))}."
  }

  validation {
    condition     = try(length(setsubtract(keys(var.platform_project.metadata), ["name", "namespace", "labels", "annotations", "finalizers"])) == 0, false)
    error_message = "platform_project.metadata has keys the argocd-apps chart does not render: ${join(", ", try(tolist(setsubtract(keys(var.platform_project.metadata), ["name", "namespace", "labels", "annotations", "finalizers"])), ["(no metadata)"]))}."
  }

  validation {
    condition     = try(length(setsubtract(keys(var.platform_project.spec), ["description", "sourceRepos", "destinations", "clusterResourceWhitelist", "clusterResourceBlacklist", "namespaceResourceBlacklist", "namespaceResourceWhitelist", "orphanedResources", "roles", "syncWindows", "signatureKeys", "sourceNamespaces", "permitOnlyProjectScopedClusters"])) == 0, false)
    error_message = "platform_project.spec has keys the argocd-apps 2.x chart does not render (they would be dropped): ${join(", ", try(tolist(setsubtract(keys(var.platform_project.spec), ["description", "sourceRepos", "destinations", "clusterResourceWhitelist", "clusterResourceBlacklist", "namespaceResourceBlacklist", "namespaceResourceWhitelist", "orphanedResources", "roles", "syncWindows", "signatureKeys", "sourceNamespaces", "permitOnlyProjectScopedClusters"])), ["(no spec)"]))}."
  }

  validation {
    # The bootstrap creates the root application in the project it creates with it.
    condition     = try(var.root_application.spec.project == var.platform_project.metadata.name, false)
    error_message = "The root application's project (${jsonencode(try(var.root_application.spec.project, null))}) is not platform_project (${jsonencode(try(var.platform_project.metadata.name, null))}): the root application must be in the project created with it."
  }

  validation {
    # Or the root application is refused by its own project and never syncs.
    condition = try(
      contains(var.platform_project.spec.sourceRepos, "*") || contains(var.platform_project.spec.sourceRepos, var.root_application.spec.source.repoURL),
      alltrue([for s in var.root_application.spec.sources : contains(var.platform_project.spec.sourceRepos, "*") || contains(var.platform_project.spec.sourceRepos, s.repoURL)]),
      false,
    )
    error_message = "platform_project.spec.sourceRepos does not allow the root application's repository: add its repoURL to the project's sourceRepos."
  }

  validation {
    condition = try(
      anytrue([
        for d in var.platform_project.spec.destinations :
        # "-" stands for a field the destination lacks: it matches nothing.
        contains(["*", try(var.root_application.spec.destination.namespace, "")], try(d.namespace, "-")) && (
          contains(["*", try(var.root_application.spec.destination.server, "")], try(d.server, "-")) ||
          contains(["*", try(var.root_application.spec.destination.name, "")], try(d.name, "-"))
        )
      ]),
      false,
    )
    error_message = "platform_project.spec.destinations does not allow the root application's destination (${jsonencode(try(var.root_application.spec.destination, null))}): add it to the project's destinations."
  }
}
