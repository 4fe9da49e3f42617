# A pure module: no provider, no resource. It only computes what the bootstrap needs from the
# topology, so `terraform test` can plan it with no provider downloaded.
terraform {
  # Validations that name another variable (environments against topology, overrides against
  # topology) are Terraform 1.9's.
  required_version = ">= 1.9.0"
}
