# The one-time bootstrap of the platform on a cluster: namespaces, Argo CD, and the root
# application with its project. Everything after it (add-ons, environments) is Argo CD's,
# from Git (argocd/apps/).
#
# Order, made explicit with depends_on so nothing races:
#   namespaces (+ StorageClass, repository Secret) -> argo-cd release (CRDs, controllers, ready)
#   -> argocd-apps release (the root Application and the platform AppProject).
# The Application and AppProject go through a second Helm release, not kubernetes_manifest:
# kubernetes_manifest reads the CRD's schema at plan time, before the first release has
# installed it (hashicorp/terraform-provider-kubernetes-alpha#218), and a custom resource in
# the same release as its operator's chart fails the same way ("no matches for kind",
# GoogleCloudPlatform/ai-on-gke#53): the Terraform/Helm bootstrap race.

module "topology" {
  source = "../topology"

  topology           = var.topology
  environments       = var.environments
  argocd_overrides   = var.argocd_overrides
  min_node_count     = var.min_node_count
  storage_class_name = var.storage_class_name
  namespace_labels   = var.namespace_labels
}

# The root Application and the platform AppProject as argocd-apps 2.x values (a pure module,
# proven by its own `terraform test`).
module "argocd_apps_values" {
  source = "../argocd-apps-values"

  argocd_namespace = module.topology.argocd_namespace
  root_application = var.root_application
  platform_project = var.platform_project
}

locals {
  argocd_namespace = module.topology.argocd_namespace

  # Repository credentials: a declarative repository Secret
  # (https://argo-cd.readthedocs.io/en/stable/operator-manual/declarative-setup/#repositories),
  # for the root application's repository unless another URL is given.
  git_credentials    = var.git_repository_password != null || var.git_repository_ssh_private_key != null
  git_repository_url = coalesce(var.git_repository_url, module.argocd_apps_values.repository_url)
}

resource "kubernetes_namespace_v1" "this" {
  for_each = module.topology.namespaces

  metadata {
    name   = each.key
    labels = each.value
  }
}

# EKS: the encrypted gp3 class the add-ons' volumes use, made the default class (kind ships its
# own "standard"; a caller naming an existing class gets none).
resource "kubernetes_storage_class_v1" "this" {
  count = module.topology.storage_class.create ? 1 : 0

  metadata {
    name = module.topology.storage_class.name
    annotations = {
      "storageclass.kubernetes.io/is-default-class" = "true"
    }
    labels = {
      "app.kubernetes.io/managed-by" = "terraform"
      "app.kubernetes.io/part-of"    = "llmops-platform"
    }
  }

  storage_provisioner    = module.topology.storage_class.provisioner
  parameters             = module.topology.storage_class.parameters
  reclaim_policy         = module.topology.storage_class.reclaim_policy
  volume_binding_mode    = module.topology.storage_class.volume_binding_mode
  allow_volume_expansion = module.topology.storage_class.allow_volume_expansion
}

# The credentials Argo CD's repo server uses for the platform repository: created only when a
# password/token or an SSH key is given (a public repository needs none).
resource "kubernetes_secret_v1" "git_repository" {
  count = local.git_credentials ? 1 : 0

  metadata {
    name      = "repo-llmops-platform"
    namespace = kubernetes_namespace_v1.this[local.argocd_namespace].metadata[0].name
    labels = {
      "argocd.argoproj.io/secret-type" = "repository"
      "app.kubernetes.io/managed-by"   = "terraform"
      "app.kubernetes.io/part-of"      = "llmops-platform"
    }
  }

  type = "Opaque"
  # tomap: both branches are map(string), whatever keys each has.
  data = var.git_repository_ssh_private_key != null ? tomap({
    type          = "git"
    url           = local.git_repository_url
    sshPrivateKey = var.git_repository_ssh_private_key
    }) : tomap({
    type     = "git"
    url      = local.git_repository_url
    username = coalesce(var.git_repository_username, "git")
    password = var.git_repository_password
  })
}

resource "helm_release" "argocd" {
  name       = var.argocd_release_name
  repository = var.argocd_chart_repository
  chart      = "argo-cd"
  version    = var.argocd_chart_version
  namespace  = kubernetes_namespace_v1.this[local.argocd_namespace].metadata[0].name

  # The namespace is Terraform's, with its Pod Security labels.
  create_namespace = false
  # Ready means every Deployment and StatefulSet rolled out, so the CRDs are served and the
  # controllers run before the root application is created.
  wait            = true
  wait_for_jobs   = true
  timeout         = var.helm_timeout_seconds
  atomic          = true
  cleanup_on_fail = true
  max_history     = 10

  values = concat([yamlencode(module.topology.argocd_values)], var.argocd_extra_values)

  depends_on = [
    kubernetes_namespace_v1.this,
    kubernetes_storage_class_v1.this,
  ]
}

resource "helm_release" "argocd_apps" {
  name       = "llmops-bootstrap"
  repository = var.argocd_chart_repository
  chart      = "argocd-apps"
  version    = var.argocd_apps_chart_version
  namespace  = helm_release.argocd.namespace

  create_namespace = false
  wait             = true
  timeout          = var.helm_timeout_seconds
  atomic           = true
  cleanup_on_fail  = true
  max_history      = 10

  values = [yamlencode(module.argocd_apps_values.values)]

  # After Argo CD is ready (its CRDs exist) and after the repository credentials, so the first
  # sync of the root application can read the repository.
  depends_on = [
    helm_release.argocd,
    kubernetes_secret_v1.git_repository,
  ]
}
