# `terraform test` of argocd-apps-values: plans only (no resource), asserting the argocd-apps
# 2.x values made from an Application and an AppProject shaped like argocd/bootstrap/*.yaml,
# and that each validation refuses what the chart would drop or what could never sync.

variables {
  root_application = {
    apiVersion = "argoproj.io/v1alpha1"
    kind       = "Application"
    metadata   = { name = "llmops-root", namespace = "argocd" }
    spec = {
      project = "platform"
      source = {
        repoURL        = "https://github.com/llmops-platform/llmops-platform.git"
        targetRevision = "main"
        path           = "argocd/apps"
        directory      = { recurse = false }
      }
      destination = { server = "https://kubernetes.default.svc", namespace = "argocd" }
      syncPolicy = {
        automated   = { prune = true, selfHeal = true }
        syncOptions = ["ServerSideApply=true"]
      }
    }
  }
  platform_project = {
    apiVersion = "argoproj.io/v1alpha1"
    kind       = "AppProject"
    metadata = {
      name       = "platform"
      namespace  = "argocd"
      finalizers = ["resources-finalizer.argocd.argoproj.io"]
    }
    spec = {
      description = "llmops platform add-ons and the app of apps"
      sourceRepos = ["https://github.com/llmops-platform/llmops-platform.git", "https://charts.external-secrets.io"]
      destinations = [
        { server = "https://kubernetes.default.svc", namespace = "argocd" },
        { server = "https://kubernetes.default.svc", namespace = "monitoring" },
      ]
      clusterResourceWhitelist   = [{ group = "apiextensions.k8s.io", kind = "CustomResourceDefinition" }]
      namespaceResourceBlacklist = [{ group = "", kind = "ResourceQuota" }]
      orphanedResources          = { warn = true }
    }
  }
}

run "bootstrap_documents" {
  command = plan

  assert {
    condition     = keys(output.values.applications) == ["llmops-root"] && keys(output.values.projects) == ["platform"]
    error_message = "one application and one project, keyed by metadata.name"
  }

  assert {
    condition     = output.values.applications["llmops-root"].namespace == "argocd" && output.values.applications["llmops-root"].project == "platform"
    error_message = "the application's namespace and project are carried over"
  }

  assert {
    condition     = output.values.applications["llmops-root"].source.path == "argocd/apps" && output.values.applications["llmops-root"].source.targetRevision == "main" && output.values.applications["llmops-root"].destination.namespace == "argocd"
    error_message = "the spec's source and destination are top-level fields of the entry"
  }

  assert {
    condition     = output.values.applications["llmops-root"].syncPolicy.automated.prune && output.values.applications["llmops-root"].syncPolicy.syncOptions == ["ServerSideApply=true"]
    error_message = "the sync policy is carried over"
  }

  assert {
    condition     = output.values.applications["llmops-root"].additionalLabels == { "app.kubernetes.io/managed-by" = "terraform" }
    error_message = "the application is labelled as Terraform's"
  }

  assert {
    condition     = !contains(keys(output.values.applications["llmops-root"]), "finalizers") && !contains(keys(output.values.applications["llmops-root"]), "metadata") && !contains(keys(output.values.applications["llmops-root"]), "spec")
    error_message = "no finalizers when the document has none, and no metadata/spec nesting"
  }

  assert {
    condition     = output.values.projects["platform"].finalizers == ["resources-finalizer.argocd.argoproj.io"] && output.values.projects["platform"].namespace == "argocd"
    error_message = "the project's finalizers and namespace are carried over"
  }

  assert {
    condition     = length(output.values.projects["platform"].sourceRepos) == 2 && length(output.values.projects["platform"].destinations) == 2 && output.values.projects["platform"].orphanedResources.warn
    error_message = "the project's spec fields are top-level fields of the entry"
  }

  assert {
    condition     = output.root_application_name == "llmops-root" && output.platform_project_name == "platform" && output.repository_url == "https://github.com/llmops-platform/llmops-platform.git"
    error_message = "names and repository"
  }
}

run "labels_annotations_and_finalizers" {
  command = plan

  variables {
    root_application = merge(var.root_application, {
      metadata = {
        name        = "llmops-root"
        labels      = { "app.kubernetes.io/part-of" = "llmops-platform" }
        annotations = { "notifications.argoproj.io/subscribe.on-sync-failed.slack" = "platform" }
        finalizers  = ["resources-finalizer.argocd.argoproj.io"]
      }
    })
  }

  assert {
    condition     = output.values.applications["llmops-root"].additionalLabels == { "app.kubernetes.io/part-of" = "llmops-platform", "app.kubernetes.io/managed-by" = "terraform" }
    error_message = "the document's labels are kept, with the managed-by label added"
  }

  assert {
    condition     = output.values.applications["llmops-root"].additionalAnnotations["notifications.argoproj.io/subscribe.on-sync-failed.slack"] == "platform" && output.values.applications["llmops-root"].finalizers == ["resources-finalizer.argocd.argoproj.io"]
    error_message = "annotations and finalizers are carried over"
  }

  assert {
    condition     = output.values.applications["llmops-root"].namespace == "argocd"
    error_message = "a document without a namespace goes to Argo CD's"
  }
}

run "multiple_sources_and_wildcard_project" {
  command = plan

  variables {
    root_application = {
      apiVersion = "argoproj.io/v1alpha1"
      kind       = "Application"
      metadata   = { name = "llmops-root" }
      spec = {
        project = "platform"
        sources = [
          { repoURL = "https://github.com/llmops-platform/llmops-platform.git", path = "argocd/apps", targetRevision = "main" },
          { repoURL = "https://github.com/llmops-platform/values.git", targetRevision = "main", ref = "values" },
        ]
        destination = { name = "in-cluster", namespace = "argocd" }
      }
    }
    platform_project = {
      apiVersion = "argoproj.io/v1alpha1"
      kind       = "AppProject"
      metadata   = { name = "platform" }
      spec = {
        sourceRepos  = ["*"]
        destinations = [{ name = "in-cluster", namespace = "*" }]
      }
    }
  }

  assert {
    condition     = output.repository_url == "https://github.com/llmops-platform/llmops-platform.git" && length(output.values.applications["llmops-root"].sources) == 2
    error_message = "sources are carried over; the repository is the first source's"
  }
}

# --- What the validations refuse ------------------------------------------------------------

run "not_an_application" {
  command = plan

  variables {
    root_application = merge(var.root_application, { kind = "ApplicationSet" })
  }

  expect_failures = [var.root_application]
}

run "application_in_another_namespace" {
  command = plan

  variables {
    root_application = merge(var.root_application, { metadata = { name = "llmops-root", namespace = "default" } })
  }

  expect_failures = [var.root_application]
}

run "application_metadata_the_chart_drops" {
  command = plan

  variables {
    root_application = merge(var.root_application, { metadata = { name = "llmops-root", generateName = "llmops-" } })
  }

  expect_failures = [var.root_application]
}

run "application_spec_the_chart_drops" {
  command = plan

  variables {
    root_application = merge(var.root_application, { spec = merge(var.root_application.spec, { operation = { sync = {} } }) })
  }

  expect_failures = [var.root_application]
}

run "application_without_source" {
  command = plan

  variables {
    root_application = merge(var.root_application, { spec = { project = "platform", destination = { server = "https://kubernetes.default.svc", namespace = "argocd" } } })
  }

  expect_failures = [var.root_application]
}

run "not_a_project" {
  command = plan

  variables {
    platform_project = merge(var.platform_project, { apiVersion = "argoproj.io/v1beta1" })
  }

  expect_failures = [var.platform_project]
}

run "project_named_default" {
  command = plan

  variables {
    root_application = merge(var.root_application, { spec = merge(var.root_application.spec, { project = "default" }) })
    platform_project = merge(var.platform_project, { metadata = { name = "default" } })
  }

  expect_failures = [var.platform_project]
}

run "project_spec_the_chart_drops" {
  command = plan

  variables {
    platform_project = merge(var.platform_project, { spec = merge(var.platform_project.spec, { destinationServiceAccounts = [] }) })
  }

  expect_failures = [var.platform_project]
}

run "application_in_another_project" {
  command = plan

  variables {
    root_application = merge(var.root_application, { spec = merge(var.root_application.spec, { project = "llmops" }) })
  }

  expect_failures = [var.platform_project]
}

run "repository_not_allowed_by_the_project" {
  command = plan

  variables {
    platform_project = merge(var.platform_project, { spec = merge(var.platform_project.spec, { sourceRepos = ["https://charts.external-secrets.io"] }) })
  }

  expect_failures = [var.platform_project]
}

run "destination_not_allowed_by_the_project" {
  command = plan

  variables {
    platform_project = merge(var.platform_project, { spec = merge(var.platform_project.spec, { destinations = [{ server = "https://kubernetes.default.svc", namespace = "monitoring" }] }) })
  }

  expect_failures = [var.platform_project]
}

run "argocd_namespace_not_a_name" {
  command = plan

  variables {
    argocd_namespace = "Argo CD"
  }

  expect_failures = [var.argocd_namespace]
}
