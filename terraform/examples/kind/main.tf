# The platform on a local kind cluster: `kind create cluster --config kind-cluster.yaml`, then
# `terraform apply -var-file=kind.tfvars` (terraform/README.md). Terraform runs once; Argo CD
# then installs the add-ons and the environments from Git.

provider "kubernetes" {
  config_path    = pathexpand(var.kubeconfig_path)
  config_context = var.kube_context
}

provider "helm" {
  kubernetes = {
    config_path    = pathexpand(var.kubeconfig_path)
    config_context = var.kube_context
  }
}

module "platform" {
  source = "../../modules/platform-bootstrap"

  topology     = "kind"
  environments = var.environments
  # kind-cluster.yaml makes one node; redis-ha is off on kind, which one node fits.
  min_node_count = 1

  # The same documents `kubectl apply -n argocd -f argocd/bootstrap/` would create.
  root_application = yamldecode(file("${path.root}/../../../argocd/bootstrap/root.yaml"))
  platform_project = yamldecode(file("${path.root}/../../../argocd/bootstrap/project.yaml"))

  argocd_chart_version    = var.argocd_chart_version
  git_repository_username = var.git_repository_username
  git_repository_password = var.git_repository_password
}
