locals {
  # --- Namespaces -------------------------------------------------------------------------
  # Pod Security Admission per namespace (https://kubernetes.io/docs/concepts/security/pod-security-standards/):
  # - llmops-<environment>: restricted; the chart's pods run as non-root, read-only, with no
  #   capability and the runtime's seccomp profile (deploy/helm/llmops, checked by its tests).
  # - external-secrets: restricted; the external-secrets chart (0.19.2) sets that same
  #   container context on its controller, webhook and cert controller.
  # - argocd: restricted; every pod of the argo-cd chart 10.1.1, its redis-ha 4.38.0 included
  #   (rendered with this module's values for each topology), runs as non-root with no
  #   privilege escalation, all capabilities dropped and the RuntimeDefault seccomp profile.
  # - qdrant: baseline, restricted warned and audited; the qdrant chart (1.15.0) drops no
  #   capability, sets no seccomp profile, and its ensure-dir-ownership init container runs
  #   as root.
  # - monitoring: privileged; kube-prometheus-stack's node-exporter uses the host's network,
  #   PID namespace and root file system. baseline is warned and audited, so anything else that
  #   needs more than baseline shows up.
  platform_namespaces = {
    argocd             = { role = "gitops", enforce = "restricted", warn = "restricted", environment = null }
    monitoring         = { role = "monitoring", enforce = "privileged", warn = "baseline", environment = null }
    "external-secrets" = { role = "secrets", enforce = "restricted", warn = "restricted", environment = null }
    qdrant             = { role = "vector-store", enforce = "baseline", warn = "restricted", environment = null }
  }

  # The ApplicationSet (argocd/apps/llmops-environments.yaml) deploys environment E into llmops-E.
  environment_namespaces = { for e in var.environments : e => "llmops-${e}" }

  namespace_specs = merge(
    local.platform_namespaces,
    { for e, ns in local.environment_namespaces : ns => { role = "environment", enforce = "restricted", warn = "restricted", environment = e } },
  )

  namespaces = {
    for name, spec in local.namespace_specs : name => merge(
      {
        "app.kubernetes.io/managed-by"               = "terraform"
        "app.kubernetes.io/part-of"                  = "llmops-platform"
        "llmops.dev/namespace-role"                  = spec.role
        "pod-security.kubernetes.io/enforce"         = spec.enforce
        "pod-security.kubernetes.io/enforce-version" = "latest"
        "pod-security.kubernetes.io/warn"            = spec.warn
        "pod-security.kubernetes.io/warn-version"    = "latest"
        "pod-security.kubernetes.io/audit"           = spec.warn
        "pod-security.kubernetes.io/audit-version"   = "latest"
      },
      spec.environment == null ? {} : { "llmops.dev/environment" = spec.environment },
      lookup(var.namespace_labels, name, {}),
    )
  }

  # --- Argo CD sizing ---------------------------------------------------------------------
  # The argo-cd chart's HA guidance (charts/argo-cd/README.md, "High Availability"): redis-ha
  # on, and 2 or more API servers, repo servers and ApplicationSet controllers; one
  # application controller (its replicas shard clusters, and there is one cluster).
  sizing_by_topology = {
    kind = {
      controller_replicas      = 1
      server_replicas          = 1
      repo_server_replicas     = 1
      application_set_replicas = 1
      redis_ha                 = false
      pdb                      = false
      autoscaling_max_replicas = 0
    }
    eks = {
      controller_replicas      = 1
      server_replicas          = 2
      repo_server_replicas     = 2
      application_set_replicas = 2
      redis_ha                 = true
      pdb                      = true
      autoscaling_max_replicas = 0
    }
    eks-ha = {
      controller_replicas      = 1
      server_replicas          = 3
      repo_server_replicas     = 3
      application_set_replicas = 3
      redis_ha                 = true
      pdb                      = true
      autoscaling_max_replicas = 6
    }
  }

  base_sizing = local.sizing_by_topology[var.topology]
  overrides   = var.argocd_overrides

  argocd_sizing = {
    controller_replicas      = coalesce(local.overrides.controller_replicas, local.base_sizing.controller_replicas)
    server_replicas          = coalesce(local.overrides.server_replicas, local.base_sizing.server_replicas)
    repo_server_replicas     = coalesce(local.overrides.repo_server_replicas, local.base_sizing.repo_server_replicas)
    application_set_replicas = coalesce(local.overrides.application_set_replicas, local.base_sizing.application_set_replicas)
    redis_ha                 = coalesce(local.overrides.redis_ha, local.base_sizing.redis_ha)
    pdb                      = coalesce(local.overrides.pdb, local.base_sizing.pdb)
    autoscaling_max_replicas = coalesce(local.overrides.autoscaling_max_replicas, local.base_sizing.autoscaling_max_replicas)
  }
  autoscaling = local.argocd_sizing.autoscaling_max_replicas > 0

  # One Redis and one HAProxy pod per node with redis-ha; otherwise one node does.
  min_nodes = local.argocd_sizing.redis_ha ? 3 : 1

  # Values of the argo-cd chart (argoproj/argo-helm charts/argo-cd) for this sizing. The
  # bootstrap passes them first, so its extra values files override them.
  argocd_values = {
    # Argo CD's CRDs outlive its release: deleting them would delete every Application.
    crds = { install = true, keep = true }
    # No SSO connector is configured at bootstrap; Dex stays off until one is (a Git change
    # to the Argo CD values, not to Terraform).
    dex        = { enabled = false }
    "redis-ha" = { enabled = local.argocd_sizing.redis_ha }
    controller = {
      replicas = local.argocd_sizing.controller_replicas
      pdb      = { enabled = local.argocd_sizing.pdb }
    }
    server = {
      replicas = local.argocd_sizing.server_replicas
      pdb      = { enabled = local.argocd_sizing.pdb }
      autoscaling = {
        enabled     = local.autoscaling
        minReplicas = local.argocd_sizing.server_replicas
        maxReplicas = local.autoscaling ? local.argocd_sizing.autoscaling_max_replicas : local.argocd_sizing.server_replicas
      }
    }
    repoServer = {
      replicas = local.argocd_sizing.repo_server_replicas
      pdb      = { enabled = local.argocd_sizing.pdb }
      autoscaling = {
        enabled     = local.autoscaling
        minReplicas = local.argocd_sizing.repo_server_replicas
        maxReplicas = local.autoscaling ? local.argocd_sizing.autoscaling_max_replicas : local.argocd_sizing.repo_server_replicas
      }
    }
    applicationSet = {
      replicas = local.argocd_sizing.application_set_replicas
      pdb      = { enabled = local.argocd_sizing.pdb }
    }
  }

  # --- Storage ----------------------------------------------------------------------------
  storage_class_by_topology = {
    # kind ships its local-path provisioner's class, "standard", as the default.
    kind = {
      name                   = "standard"
      create                 = false
      provisioner            = "rancher.io/local-path"
      parameters             = {}
      reclaim_policy         = "Delete"
      volume_binding_mode    = "WaitForFirstConsumer"
      allow_volume_expansion = false
    }
    # EKS: the EBS CSI driver's gp3, encrypted, made the default by the bootstrap. Retain:
    # Qdrant's and Prometheus' volumes survive the deletion of their claims (an uninstall, a
    # renamed StatefulSet); deleting the EBS volume is a deliberate act.
    eks = {
      name        = "gp3"
      create      = true
      provisioner = "ebs.csi.aws.com"
      parameters = {
        type                        = "gp3"
        encrypted                   = "true"
        "csi.storage.k8s.io/fstype" = "ext4"
      }
      reclaim_policy         = "Retain"
      volume_binding_mode    = "WaitForFirstConsumer"
      allow_volume_expansion = true
    }
  }

  topology_storage_class = local.storage_class_by_topology[var.topology == "kind" ? "kind" : "eks"]

  # An existing class the caller names is used as is: nothing to create.
  storage_class = var.storage_class_name == null ? local.topology_storage_class : merge(local.topology_storage_class, {
    name   = var.storage_class_name
    create = false
  })
}
