// Validates custom resources (the chart's rendered ones, argocd/'s manifests) against their upstream CRD schemas (the
// @kubernetes-models packages), reading a JSON array of documents on stdin and printing
// {"checked": [...], "errors": [...]} as JSON. The models' validate() checks types, enums,
// patterns and required fields but lets unknown fields through, so each document is also
// written as a typed object literal and compiled with tsc --noEmit: TypeScript's
// excess-property check rejects every field the CRD does not declare, at any depth.
// Run from .tools/node (where the packages are): node --input-type=module < this file.
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { readFileSync } from "node:fs";

const MODELS = {
  "argoproj.io/v1alpha1": ["@kubernetes-models/argo-cd/argoproj.io/v1alpha1", ["Application", "ApplicationSet", "AppProject"]],
  "monitoring.coreos.com/v1": ["@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1", ["ServiceMonitor", "PrometheusRule", "PodMonitor"]],
  "external-secrets.io/v1": ["@kubernetes-models/external-secrets/external-secrets.io/v1", ["ExternalSecret", "SecretStore", "ClusterSecretStore"]],
  "keda.sh/v1alpha1": ["@kubernetes-models/keda/keda.sh/v1alpha1", ["ScaledObject", "TriggerAuthentication"]],
};

const docs = JSON.parse(readFileSync(process.env.LLMOPS_CRD_INPUT, "utf8"));
const checked = [];
const errors = [];
const typed = [];
for (const [i, doc] of docs.entries()) {
  const entry = MODELS[doc.apiVersion];
  const name = `${doc.kind}/${doc.metadata?.name}`;
  if (!entry || !entry[1].includes(doc.kind)) {
    errors.push(`${name}: no schema for ${doc.apiVersion} ${doc.kind}`);
    continue;
  }
  const mod = await import(entry[0]);
  try {
    new mod[doc.kind](doc).validate();
  } catch (e) {
    errors.push(`${name}: ${e.message}`);
  }
  typed.push(`import type { I${doc.kind} as T${i} } from "${entry[0]}";\nexport const d${i}: T${i} = ${JSON.stringify(doc, null, 1)};\n`);
  checked.push(name);
}
if (typed.length) {
  const dir = mkdtempSync(join(process.cwd(), ".crd-check-"));
  const file = join(dir, "check.mts");
  writeFileSync(file, typed.join("\n"));
  try {
    execFileSync(process.execPath, [
      "node_modules/typescript/bin/tsc", "--noEmit", "--strict", "--skipLibCheck",
      "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022", file,
    ], { encoding: "utf8", stdio: "pipe" });
  } catch (e) {
    for (const line of (e.stdout || e.message).split("\n")) if (line.includes("error TS")) errors.push(line.replace(dir, ""));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
console.log(JSON.stringify({ checked, errors }));
