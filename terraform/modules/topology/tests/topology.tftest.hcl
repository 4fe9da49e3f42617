# `terraform test` of the topology module: plans only (the module has no resource), asserting
# the outputs per topology and that each validation refuses what it is there to refuse.

run "kind_defaults" {
  command = plan

  variables {
    topology = "kind"
  }

  assert {
    condition     = output.namespace_names == tolist(["argocd", "external-secrets", "llmops-production", "llmops-staging", "monitoring", "qdrant"])
    error_message = "kind: the platform namespaces and one llmops-<environment> per default environment"
  }

  assert {
    condition     = output.environment_namespaces == { staging = "llmops-staging", production = "llmops-production" }
    error_message = "environment E is deployed into llmops-E"
  }

  assert {
    condition = alltrue([
      for ns in ["llmops-staging", "llmops-production", "external-secrets", "argocd"] :
      output.namespaces[ns]["pod-security.kubernetes.io/enforce"] == "restricted"
    ])
    error_message = "the llmops namespaces, argocd and external-secrets enforce the restricted Pod Security Standard"
  }

  assert {
    condition     = output.namespaces["monitoring"]["pod-security.kubernetes.io/enforce"] == "privileged" && output.namespaces["monitoring"]["pod-security.kubernetes.io/warn"] == "baseline"
    error_message = "monitoring is privileged (node-exporter) with baseline warned"
  }

  assert {
    condition     = output.namespaces["qdrant"]["pod-security.kubernetes.io/enforce"] == "baseline" && output.namespaces["qdrant"]["pod-security.kubernetes.io/audit"] == "restricted"
    error_message = "qdrant enforces baseline and audits restricted"
  }

  assert {
    condition     = output.namespaces["llmops-production"]["llmops.dev/environment"] == "production" && !contains(keys(output.namespaces["argocd"]), "llmops.dev/environment")
    error_message = "only the environments' namespaces carry llmops.dev/environment"
  }

  assert {
    condition     = alltrue([for ns, labels in output.namespaces : labels["app.kubernetes.io/managed-by"] == "terraform"])
    error_message = "every namespace is labelled as Terraform's"
  }

  assert {
    condition     = output.argocd_values["redis-ha"].enabled == false && output.argocd_values.server.replicas == 1 && output.argocd_values.repoServer.replicas == 1 && output.argocd_values.applicationSet.replicas == 1 && output.argocd_values.controller.replicas == 1
    error_message = "kind: one replica of everything and no redis-ha"
  }

  assert {
    condition     = !output.argocd_values.server.autoscaling.enabled && !output.argocd_values.server.pdb.enabled && !output.argocd_values.dex.enabled && output.argocd_values.crds.keep
    error_message = "kind: no autoscaling, no PodDisruptionBudget, no Dex, CRDs kept"
  }

  assert {
    condition     = output.storage_class.name == "standard" && !output.storage_class.create
    error_message = "kind uses its own StorageClass, standard, and creates none"
  }

  assert {
    condition     = output.min_nodes == 1
    error_message = "kind's sizing fits one node"
  }
}

run "eks_defaults" {
  command = plan

  variables {
    topology       = "eks"
    min_node_count = 3
  }

  assert {
    condition     = output.argocd_values["redis-ha"].enabled && output.argocd_sizing.redis_ha
    error_message = "eks: redis-ha on"
  }

  assert {
    condition     = output.argocd_values.server.replicas == 2 && output.argocd_values.repoServer.replicas == 2 && output.argocd_values.applicationSet.replicas == 2 && output.argocd_values.controller.replicas == 1
    error_message = "eks: 2 API servers, repo servers and ApplicationSet controllers, 1 application controller"
  }

  assert {
    condition     = output.argocd_values.server.pdb.enabled && output.argocd_values.repoServer.pdb.enabled && output.argocd_values.applicationSet.pdb.enabled && !output.argocd_values.server.autoscaling.enabled
    error_message = "eks: PodDisruptionBudgets, no autoscaling"
  }

  assert {
    condition     = output.storage_class.name == "gp3" && output.storage_class.create && output.storage_class.provisioner == "ebs.csi.aws.com" && output.storage_class.parameters.encrypted == "true" && output.storage_class.reclaim_policy == "Retain"
    error_message = "eks: an encrypted gp3 class of the EBS CSI driver, made by the bootstrap, volumes retained"
  }

  assert {
    condition     = output.min_nodes == 3
    error_message = "redis-ha needs 3 nodes"
  }

  assert {
    condition     = output.namespaces["llmops-staging"]["pod-security.kubernetes.io/enforce"] == "restricted"
    error_message = "the Pod Security levels do not depend on the topology"
  }
}

run "eks_ha" {
  command = plan

  variables {
    topology = "eks-ha"
  }

  assert {
    condition     = output.argocd_values.server.autoscaling.enabled && output.argocd_values.server.autoscaling.minReplicas == 3 && output.argocd_values.server.autoscaling.maxReplicas == 6
    error_message = "eks-ha: the API server autoscaled from 3 to 6"
  }

  assert {
    condition     = output.argocd_values.repoServer.autoscaling.enabled && output.argocd_values.repoServer.autoscaling.minReplicas == 3 && output.argocd_values.repoServer.autoscaling.maxReplicas == 6
    error_message = "eks-ha: the repo server autoscaled from 3 to 6"
  }

  assert {
    condition     = output.argocd_values.applicationSet.replicas == 3 && output.argocd_values["redis-ha"].enabled && output.storage_class.name == "gp3"
    error_message = "eks-ha: 3 ApplicationSet controllers, redis-ha, gp3"
  }
}

run "overrides" {
  command = plan

  variables {
    topology           = "eks"
    storage_class_name = "efs-sc"
    argocd_overrides = {
      server_replicas          = 4
      autoscaling_max_replicas = 8
      redis_ha                 = false
    }
    min_node_count = 2
    namespace_labels = {
      "llmops-production" = { "llmops.dev/cost-center" = "ml-platform" }
    }
  }

  assert {
    condition     = output.argocd_values.server.autoscaling.minReplicas == 4 && output.argocd_values.server.autoscaling.maxReplicas == 8 && output.argocd_values.repoServer.autoscaling.minReplicas == 2
    error_message = "overridden attributes win, the others keep the topology's values"
  }

  assert {
    condition     = !output.argocd_values["redis-ha"].enabled && output.min_nodes == 1
    error_message = "redis-ha off: one node is enough"
  }

  assert {
    condition     = output.storage_class.name == "efs-sc" && !output.storage_class.create
    error_message = "a named StorageClass is used as is, none is created"
  }

  assert {
    condition     = output.namespaces["llmops-production"]["llmops.dev/cost-center"] == "ml-platform" && output.namespaces["llmops-production"]["pod-security.kubernetes.io/enforce"] == "restricted"
    error_message = "extra labels are merged over the module's"
  }
}

run "autoscaling_off_in_eks_ha" {
  command = plan

  variables {
    topology         = "eks-ha"
    argocd_overrides = { autoscaling_max_replicas = 0 }
  }

  assert {
    condition     = !output.argocd_values.server.autoscaling.enabled && output.argocd_values.server.replicas == 3
    error_message = "autoscaling_max_replicas = 0 turns the autoscalers off"
  }
}

run "one_environment" {
  command = plan

  variables {
    topology     = "kind"
    environments = ["staging"]
  }

  assert {
    condition     = output.namespace_names == tolist(["argocd", "external-secrets", "llmops-staging", "monitoring", "qdrant"])
    error_message = "one environment, one llmops namespace"
  }
}

run "three_environments" {
  command = plan

  variables {
    topology     = "kind"
    environments = ["dev", "staging", "production"]
  }

  assert {
    condition     = output.environment_namespaces == { dev = "llmops-dev", staging = "llmops-staging", production = "llmops-production" }
    error_message = "every environment gets its namespace"
  }
}

# --- What the validations refuse ------------------------------------------------------------

run "unknown_topology" {
  command = plan

  variables {
    topology = "gke"
  }

  expect_failures = [var.topology]
}

run "environment_not_a_dns_label" {
  command = plan

  variables {
    topology     = "kind"
    environments = ["Staging", "prod_1"]
  }

  expect_failures = [var.environments]
}

run "environment_too_long" {
  command = plan

  variables {
    topology     = "kind"
    environments = ["a-very-long-environment-name-that-makes-a-namespace-too-long-x"]
  }

  expect_failures = [var.environments]
}

run "no_environment" {
  command = plan

  variables {
    topology     = "kind"
    environments = []
  }

  expect_failures = [var.environments]
}

run "repeated_environment" {
  command = plan

  variables {
    topology     = "kind"
    environments = ["staging", "staging"]
  }

  expect_failures = [var.environments]
}

run "production_without_staging" {
  command = plan

  variables {
    topology     = "kind"
    environments = ["production"]
  }

  expect_failures = [var.environments]
}

run "production_before_staging" {
  command = plan

  variables {
    topology     = "kind"
    environments = ["production", "staging"]
  }

  expect_failures = [var.environments]
}

run "zero_replicas" {
  command = plan

  variables {
    topology         = "eks"
    argocd_overrides = { server_replicas = 0 }
  }

  expect_failures = [var.argocd_overrides]
}

run "fractional_replicas" {
  command = plan

  variables {
    topology         = "eks"
    argocd_overrides = { repo_server_replicas = 1.5 }
  }

  expect_failures = [var.argocd_overrides]
}

run "autoscaling_out_of_range" {
  command = plan

  variables {
    topology         = "eks"
    argocd_overrides = { autoscaling_max_replicas = 50 }
  }

  expect_failures = [var.argocd_overrides]
}

run "redis_ha_on_kind" {
  command = plan

  variables {
    topology         = "kind"
    argocd_overrides = { redis_ha = true }
  }

  expect_failures = [var.argocd_overrides]
}

run "sharded_controller_on_kind" {
  command = plan

  variables {
    topology         = "kind"
    argocd_overrides = { controller_replicas = 2 }
  }

  expect_failures = [var.argocd_overrides]
}

run "too_few_nodes_for_redis_ha" {
  command = plan

  variables {
    topology       = "eks"
    min_node_count = 2
  }

  expect_failures = [var.min_node_count]
}

run "zero_nodes" {
  command = plan

  variables {
    topology       = "kind"
    min_node_count = 0
  }

  expect_failures = [var.min_node_count]
}

run "storage_class_not_a_name" {
  command = plan

  variables {
    topology           = "eks"
    storage_class_name = "GP3 Encrypted"
  }

  expect_failures = [var.storage_class_name]
}

run "labels_for_an_unknown_namespace" {
  command = plan

  variables {
    topology         = "kind"
    namespace_labels = { "llmops-qa" = { team = "ml" } }
  }

  expect_failures = [var.namespace_labels]
}

run "labels_overriding_pod_security" {
  command = plan

  variables {
    topology         = "kind"
    namespace_labels = { "llmops-staging" = { "pod-security.kubernetes.io/enforce" = "privileged" } }
  }

  expect_failures = [var.namespace_labels]
}

run "label_value_invalid" {
  command = plan

  variables {
    topology         = "kind"
    namespace_labels = { qdrant = { team = "-not valid-" } }
  }

  expect_failures = [var.namespace_labels]
}

run "autoscaling_below_replicas" {
  command = plan

  variables {
    topology         = "eks-ha"
    argocd_overrides = { server_replicas = 8 }
  }

  expect_failures = [output.argocd_sizing]
}

run "pdb_over_single_replicas" {
  command = plan

  variables {
    topology         = "kind"
    argocd_overrides = { pdb = true }
  }

  expect_failures = [output.argocd_sizing]
}
