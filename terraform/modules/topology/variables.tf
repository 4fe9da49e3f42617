variable "topology" {
  description = <<-EOT
    Where the platform runs. "kind": a local kind cluster (Argo CD with one replica of
    everything, no redis-ha, kind's own "standard" StorageClass). "eks": an EKS cluster of 3 or
    more nodes (Argo CD's servers, repo servers and ApplicationSet controller twice each, with
    PodDisruptionBudgets and redis-ha, whose hard anti-affinity needs 3 nodes; an encrypted gp3
    StorageClass made the default). "eks-ha": as "eks", with 3 replicas each and the API and
    repo servers autoscaled up to 6.
  EOT
  type        = string
  nullable    = false

  validation {
    condition     = contains(["kind", "eks", "eks-ha"], var.topology)
    error_message = "topology must be one of \"kind\", \"eks\" or \"eks-ha\", not ${jsonencode(var.topology)}."
  }
}

variable "environments" {
  description = <<-EOT
    The environments the Argo CD ApplicationSet deploys (one folder argocd/envs/<environment>
    each), in promotion order. Environment E runs in the namespace llmops-E, which this module
    names and labels. "production" is promoted from "staging", so it needs "staging" before it.
  EOT
  type        = list(string)
  default     = ["staging", "production"]
  nullable    = false

  validation {
    condition     = length(var.environments) > 0
    error_message = "environments must name at least one environment (for example [\"staging\"])."
  }

  validation {
    condition     = alltrue([for e in var.environments : can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", e))])
    error_message = "Each environment must be a DNS label (lowercase letters, digits and '-', starting and ending with a letter or a digit): it becomes the namespace llmops-<environment>. Not DNS labels: ${join(", ", [for e in var.environments : jsonencode(e) if !can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", e))])}."
  }

  validation {
    # A namespace name is a DNS label: 63 characters at most, "llmops-" included.
    condition     = alltrue([for e in var.environments : length(e) <= 56])
    error_message = "An environment name has at most 56 characters (the namespace llmops-<environment> is a DNS label of at most 63). Too long: ${join(", ", [for e in var.environments : jsonencode(e) if length(e) > 56])}."
  }

  validation {
    condition     = length(distinct(var.environments)) == length(var.environments)
    error_message = "Each environment is listed once; repeated: ${join(", ", distinct([for i, e in var.environments : jsonencode(e) if contains(slice(var.environments, 0, i), e)]))}."
  }

  validation {
    # `index` fails on a missing element: the try() makes a missing "staging" a false, and
    # "no production at all" is accepted whatever the right-hand side is.
    condition     = !contains(var.environments, "production") || try(index(var.environments, "staging") < index(var.environments, "production"), false)
    error_message = "\"production\" is promoted from \"staging\" (llmops promote checks staging first): list \"staging\" before \"production\" in environments, got ${jsonencode(var.environments)}."
  }
}

variable "argocd_overrides" {
  description = <<-EOT
    Overrides of the topology's Argo CD sizing; an attribute left null keeps the topology's
    value. Replica counts are for the application controller, the API server, the repo server
    and the ApplicationSet controller; redis_ha switches the chart's redis-ha (3 Redis pods
    and 3 HAProxy pods, one per node); pdb the PodDisruptionBudgets; autoscaling_max_replicas
    turns on the API and repo servers' HorizontalPodAutoscalers up to that many pods (from
    their replica count), 0 turns them off.
  EOT
  type = object({
    controller_replicas      = optional(number)
    server_replicas          = optional(number)
    repo_server_replicas     = optional(number)
    application_set_replicas = optional(number)
    redis_ha                 = optional(bool)
    pdb                      = optional(bool)
    autoscaling_max_replicas = optional(number)
  })
  default  = {}
  nullable = false

  validation {
    condition = alltrue([
      for n in [
        var.argocd_overrides.controller_replicas,
        var.argocd_overrides.server_replicas,
        var.argocd_overrides.repo_server_replicas,
        var.argocd_overrides.application_set_replicas,
      ] : n == null || try(n >= 1 && n <= 10 && floor(n) == n, false)
    ])
    error_message = "Argo CD replica counts in argocd_overrides are whole numbers from 1 to 10."
  }

  validation {
    condition     = var.argocd_overrides.autoscaling_max_replicas == null || try(var.argocd_overrides.autoscaling_max_replicas >= 0 && var.argocd_overrides.autoscaling_max_replicas <= 20 && floor(var.argocd_overrides.autoscaling_max_replicas) == var.argocd_overrides.autoscaling_max_replicas, false)
    error_message = "argocd_overrides.autoscaling_max_replicas is a whole number from 0 (no autoscaling) to 20."
  }

  validation {
    # The chart's redis-ha spreads 3 Redis and 3 HAProxy pods with a hard anti-affinity (one
    # per node): on a one-node kind cluster they stay Pending and Argo CD never gets ready.
    condition     = !(var.topology == "kind" && var.argocd_overrides.redis_ha == true)
    error_message = "argocd_overrides.redis_ha = true needs 3 nodes (redis-ha's hard pod anti-affinity); the kind topology is sized for one: use topology \"eks\" or leave redis_ha unset."
  }

  validation {
    # Controller replicas are shards of the clusters Argo CD manages: it manages one here.
    condition     = var.argocd_overrides.controller_replicas == null || var.argocd_overrides.controller_replicas == 1 || var.topology != "kind"
    error_message = "argocd_overrides.controller_replicas above 1 shards the application controller by cluster; the kind topology manages one cluster on one node: leave it unset."
  }
}

variable "min_node_count" {
  description = <<-EOT
    The number of schedulable nodes the cluster keeps at the least (an EKS node group's
    min_size, a kind cluster's node count), checked against what the topology needs; null
    skips the check.
  EOT
  type        = number
  default     = null

  validation {
    condition     = var.min_node_count == null || try(var.min_node_count >= 1 && floor(var.min_node_count) == var.min_node_count, false)
    error_message = "min_node_count is a whole number of nodes, 1 or more (or null)."
  }

  validation {
    # redis-ha (on by default for the eks topologies, or asked for in argocd_overrides) places
    # one Redis and one HAProxy pod per node.
    condition     = var.min_node_count == null || try(var.min_node_count >= (coalesce(var.argocd_overrides.redis_ha, var.topology != "kind") ? 3 : 1), false)
    error_message = "Argo CD's redis-ha (on for the eks topologies unless argocd_overrides.redis_ha = false) needs at least 3 nodes, one per Redis pod; min_node_count is ${coalesce(var.min_node_count, 0)}."
  }
}

variable "storage_class_name" {
  description = <<-EOT
    An existing StorageClass for the add-ons' volumes (Qdrant, Prometheus) instead of the
    topology's; when given the bootstrap creates no StorageClass. null keeps the topology's
    ("standard" on kind, an encrypted "gp3" made by the bootstrap on EKS).
  EOT
  type        = string
  default     = null

  validation {
    condition     = var.storage_class_name == null || (can(regex("^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", var.storage_class_name)) && try(length(var.storage_class_name) <= 253, false))
    error_message = "storage_class_name is a Kubernetes object name (a DNS subdomain: lowercase letters, digits, '-' and '.', at most 253 characters), not ${jsonencode(var.storage_class_name)}."
  }
}

variable "namespace_labels" {
  description = <<-EOT
    Extra labels per platform namespace, keyed by namespace name (argocd, monitoring,
    external-secrets, qdrant, llmops-<environment>), merged over the module's own. The Pod
    Security Admission labels (pod-security.kubernetes.io/*) are the module's and may not be
    set here.
  EOT
  type        = map(map(string))
  default     = {}
  nullable    = false

  validation {
    condition = alltrue([
      for ns in keys(var.namespace_labels) :
      contains(concat(["argocd", "monitoring", "external-secrets", "qdrant"], [for e in var.environments : "llmops-${e}"]), ns)
    ])
    error_message = "namespace_labels names namespaces the platform does not create: ${join(", ", [for ns in keys(var.namespace_labels) : jsonencode(ns) if !contains(concat(["argocd", "monitoring", "external-secrets", "qdrant"], [for e in var.environments : "llmops-${e}"]), ns)])} (it creates argocd, monitoring, external-secrets, qdrant and llmops-<environment> for each environment)."
  }

  validation {
    condition     = alltrue(flatten([for ns, labels in var.namespace_labels : [for k in keys(labels) : !startswith(k, "pod-security.kubernetes.io/")]]))
    error_message = "Pod Security Admission labels (pod-security.kubernetes.io/*) are set by the module (restricted for the llmops namespaces, argocd and external-secrets, baseline for qdrant, privileged for monitoring's node-exporter); namespace_labels may not set them."
  }

  validation {
    # Kubernetes label syntax: an optional DNS-subdomain prefix and "/", a name of at most 63
    # characters; a value of at most 63 characters, empty or alphanumeric at both ends.
    condition = alltrue(flatten([
      for ns, labels in var.namespace_labels : [
        for k, v in labels :
        can(regex("^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$", k))
        && can(regex("^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$", v))
      ]
    ]))
    error_message = "namespace_labels has a key or value that is not a valid Kubernetes label (key: [prefix/]name, name at most 63 characters; value: at most 63 characters, alphanumeric at both ends)."
  }
}
