# A pure module: no provider, no resource. It turns the root Application and the platform
# AppProject (argocd/bootstrap/*.yaml, parsed) into the argocd-apps chart's values, and refuses
# what the chart would silently drop, so `terraform test` can prove it with no provider.
terraform {
  # Validations that name another variable (the project against the root application) are
  # Terraform 1.9's.
  required_version = ">= 1.9.0"
}
