// Offline check of the Kubernetes manifests in deploy/kubernetes (tests/kubernetes/run.sh
// renders them with `kubectl kustomize` and runs this; no cluster is involved).
//
//   node validate.mjs --rendered FILE [--extra FILE]... [--repo DIR]
//       Validates every object of FILE (the rendered multi-document YAML) and of each
//       --extra file against the Kubernetes API schemas of the npm package kubernetes-models
//       (and @kubernetes-models/prometheus-operator for ServiceMonitor and PrometheusRule):
//       one line per object, "ok Kind/name" or "FAIL Kind/name: why". An apiVersion/kind
//       with no model fails. Then the checks the schemas cannot make (see `checks` below),
//       one line each, and a total. Exit status 1 on any failure.
//
//   node validate.mjs --write-prometheusrule [--repo DIR]
//       Rewrites deploy/kubernetes/prometheusrule.yaml from contrib/prometheus/alerts.yml,
//       the source of the alert rules, after a change there.
//
// The schemas check types, required fields and formats; they accept a field name they do
// not know (the API server's strict field validation would not), which is why the fields
// that matter here are also checked by name below.

import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments, parse, stringify } from "yaml";

import * as coreV1 from "kubernetes-models/v1";
import * as appsV1 from "kubernetes-models/apps/v1";
import * as batchV1 from "kubernetes-models/batch/v1";
import * as policyV1 from "kubernetes-models/policy/v1";
import * as networkingV1 from "kubernetes-models/networking.k8s.io/v1";
import * as rbacV1 from "kubernetes-models/rbac.authorization.k8s.io/v1";
import * as autoscalingV2 from "kubernetes-models/autoscaling/v2";
import * as monitoringV1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const modules = {
  v1: coreV1,
  "apps/v1": appsV1,
  "batch/v1": batchV1,
  "policy/v1": policyV1,
  "networking.k8s.io/v1": networkingV1,
  "rbac.authorization.k8s.io/v1": rbacV1,
  "autoscaling/v2": autoscalingV2,
  "monitoring.coreos.com/v1": monitoringV1,
};

const here = dirname(fileURLToPath(import.meta.url));
const RULE_FILE = "deploy/kubernetes/prometheusrule.yaml";
const ALERTS_FILE = "contrib/prometheus/alerts.yml";
// Being added with `mxhook drain`; accepted even where .env.example does not list it yet.
const EXTRA_VARIABLES = new Set(["DRAIN_TIMEOUT_MS"]);
const DEFAULT_MS = { DRAIN_TIMEOUT_MS: 60000, SHUTDOWN_GRACE_MS: 30000 };

function parseArgs(argv) {
  const args = { rendered: null, extra: [], repo: resolve(here, "../.."), write: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--rendered") args.rendered = value();
    else if (a === "--extra") args.extra.push(value());
    else if (a === "--repo") args.repo = resolve(value());
    else if (a === "--write-prometheusrule") args.write = true;
    else usage(`unknown argument ${a}`);
  }
  if (!args.write && !args.rendered) usage("--rendered FILE is required");
  return args;
}

function usage(why) {
  console.error(`validate.mjs: ${why}
usage: node validate.mjs --rendered FILE [--extra FILE]... [--repo DIR]
       node validate.mjs --write-prometheusrule [--repo DIR]`);
  process.exit(2);
}

// ---- the PrometheusRule and alerts.yml -------------------------------------------------

const RULE_HEADER = `# The alert rules of contrib/prometheus/alerts.yml for the Prometheus operator (the rules
# select job="mxhook", which servicemonitor.yaml's jobLabel gives). Generated: spec.groups
# is alerts.yml's groups, and tests/kubernetes/validate.mjs fails when they differ. After a
# change to alerts.yml run: node tests/kubernetes/validate.mjs --write-prometheusrule
# A Prometheus whose ruleSelector wants a label (kube-prometheus-stack: release: <its
# name>) needs it added in an overlay (commonLabels or a patch): this file is rewritten.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: mxhook
  labels:
    app.kubernetes.io/name: mxhook
spec:
`;

function alertGroups(repo) {
  const alerts = parse(readFileSync(join(repo, ALERTS_FILE), "utf8"));
  if (!alerts || !Array.isArray(alerts.groups)) throw new Error(`${ALERTS_FILE} has no groups: list`);
  return alerts.groups;
}

function writePrometheusRule(repo) {
  const text = readFileSync(join(repo, ALERTS_FILE), "utf8");
  const lines = text.split("\n");
  const start = lines.findIndex((l) => /^groups:\s*$/.test(l));
  if (start < 0) throw new Error(`${ALERTS_FILE}: no top-level "groups:" line`);
  // alerts.yml's groups, text and comments kept, two columns deeper under spec:.
  const body = lines
    .slice(start)
    .map((l) => (l.trim() === "" ? "" : "  " + l))
    .join("\n")
    .replace(/\n+$/, "\n");
  const out = RULE_HEADER + body;
  const written = parse(out);
  if (!deepEqual(written.spec.groups, alertGroups(repo))) {
    throw new Error(`the groups written differ from ${ALERTS_FILE}'s (a top-level key after groups:?)`);
  }
  writeFileSync(join(repo, RULE_FILE), out);
  console.log(`wrote ${RULE_FILE} from ${ALERTS_FILE}`);
}

function canonical(value) {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, canonical(value[k])]));
  }
  return value;
}

function deepEqual(a, b) {
  return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

// A unified diff of two values as YAML (diff(1) where there is one, else both listed).
function yamlDiff(a, labelA, b, labelB) {
  const textA = stringify(canonical(a), { lineWidth: 0 });
  const textB = stringify(canonical(b), { lineWidth: 0 });
  const dir = mkdtempSync(join(tmpdir(), "mxhook-k8s-"));
  try {
    const fileA = join(dir, "a.yaml");
    const fileB = join(dir, "b.yaml");
    writeFileSync(fileA, textA);
    writeFileSync(fileB, textB);
    const r = spawnSync("diff", ["-u", "--label", labelA, "--label", labelB, fileA, fileB], { encoding: "utf8" });
    if (r.status === 1 && r.stdout) return r.stdout.replace(/\n$/, "");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return `--- ${labelA}\n${textA}\n+++ ${labelB}\n${textB}`;
}

// ---- reading and schema validation -----------------------------------------------------

function loadObjects(file) {
  const objects = [];
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  for (const doc of docs) {
    if (doc.errors.length) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join("; ")}`);
    const value = doc.toJS();
    if (value === null || value === undefined) continue;
    objects.push({ file, value });
  }
  return objects;
}

function modelFor(apiVersion, kind) {
  const mod = modules[apiVersion];
  if (!mod) return null;
  for (const cls of Object.values(mod)) {
    if (typeof cls === "function" && cls.apiVersion === apiVersion && cls.kind === kind) return cls;
  }
  return null;
}

function describe(obj) {
  return `${obj.kind ?? "?"}/${obj.metadata?.name ?? "?"}`;
}

function validateObject(obj) {
  if (!obj || typeof obj !== "object" || Array.isArray(obj)) return "not a mapping";
  if (!obj.apiVersion || !obj.kind) return "no apiVersion or kind";
  const Model = modelFor(obj.apiVersion, obj.kind);
  if (!Model) return `no model for ${obj.apiVersion} ${obj.kind} (unknown kind: add its model to validate.mjs)`;
  if (!obj.metadata?.name) return "no metadata.name";
  try {
    new Model(obj).validate();
  } catch (e) {
    return e.message;
  }
  return null;
}

// ---- checks the schemas do not make ---------------------------------------------------

// Variable names of .env.example (lines NAME=value), except those of its Compose-only
// section, which docker-compose.yml reads and mxhook does not.
function envExampleNames(repo) {
  const names = new Set();
  let composeOnly = false;
  for (const line of readFileSync(join(repo, ".env.example"), "utf8").split("\n")) {
    if (/^#\s*---\s*Container\b/.test(line)) composeOnly = true;
    else if (/^#\s*---/.test(line)) composeOnly = false;
    const m = /^([A-Z][A-Z0-9_]*)=/.exec(line);
    if (m && !composeOnly) names.add(m[1]);
  }
  return names;
}

function podSpecOf(obj) {
  switch (obj.kind) {
    case "Pod":
      return obj.spec;
    case "StatefulSet":
    case "Deployment":
    case "DaemonSet":
    case "ReplicaSet":
    case "Job":
      return obj.spec?.template?.spec;
    case "CronJob":
      return obj.spec?.jobTemplate?.spec?.template?.spec;
    default:
      return null;
  }
}

const LONG_RUNNING = new Set(["StatefulSet", "Deployment", "DaemonSet", "ReplicaSet"]);

function matches(selector, labels) {
  return Object.entries(selector ?? {}).every(([k, v]) => labels?.[k] === v);
}

function portNumber(listen) {
  const m = /:(\d+)$/.exec(listen ?? "");
  return m ? Number(m[1]) : null;
}

function runChecks(objects, repo) {
  const results = [];
  const check = (name, problems) => results.push({ name, problems: problems.filter(Boolean) });
  const all = objects.map((o) => o.value);
  const byKind = (kind) => all.filter((o) => o?.kind === kind);
  const find = (kind, name) => all.find((o) => o?.kind === kind && o.metadata?.name === name);

  const configMap = find("ConfigMap", "mxhook-config");
  const secret = find("Secret", "mxhook-secrets");
  const statefulSet = find("StatefulSet", "mxhook");
  const config = configMap?.data ?? {};
  check("the objects mxhook needs are there", [
    !configMap && "no ConfigMap/mxhook-config",
    !secret && "no Secret/mxhook-secrets",
    !statefulSet && "no StatefulSet/mxhook",
    !find("Service", "mxhook") && "no Service/mxhook",
    !find("Service", "mxhook-headless") && "no Service/mxhook-headless",
    !find("Service", "mxhook-metrics") && "no Service/mxhook-metrics",
    byKind("PodDisruptionBudget").length === 0 && "no PodDisruptionBudget",
    !find("ServiceMonitor", "mxhook") && "no ServiceMonitor/mxhook",
    !find("PrometheusRule", "mxhook") && "no PrometheusRule/mxhook",
  ]);

  // Every variable handed to mxhook is one it reads; no secret value is committed.
  const known = envExampleNames(repo);
  const envProblems = [];
  for (const cm of byKind("ConfigMap")) {
    for (const key of Object.keys(cm.data ?? {})) {
      if (!known.has(key) && !EXTRA_VARIABLES.has(key)) {
        envProblems.push(`ConfigMap/${cm.metadata.name}: ${key} is not a variable of .env.example`);
      }
    }
  }
  for (const s of byKind("Secret")) {
    for (const [key, value] of Object.entries({ ...(s.data ?? {}), ...(s.stringData ?? {}) })) {
      if (!known.has(key) && !EXTRA_VARIABLES.has(key)) {
        envProblems.push(`Secret/${s.metadata.name}: ${key} is not a variable of .env.example`);
      }
      if (value !== "" && value !== null) {
        envProblems.push(`Secret/${s.metadata.name}: ${key} has a value; commit only empty placeholders`);
      }
    }
  }
  check("ConfigMap and Secret keys are variables of .env.example (or DRAIN_TIMEOUT_MS); no secret committed", envProblems);

  // Pods: hardening, probes, references.
  const podProblems = [];
  const probeProblems = [];
  for (const obj of all) {
    const pod = podSpecOf(obj);
    if (!pod) continue;
    const where = describe(obj);
    const podSc = pod.securityContext ?? {};
    if (podSc.seccompProfile?.type !== "RuntimeDefault") podProblems.push(`${where}: seccompProfile is not RuntimeDefault`);
    for (const c of [...(pod.initContainers ?? []), ...(pod.containers ?? [])]) {
      const at = `${where} container ${c.name}`;
      const sc = c.securityContext ?? {};
      if (sc.readOnlyRootFilesystem !== true) podProblems.push(`${at}: readOnlyRootFilesystem is not true`);
      if (sc.allowPrivilegeEscalation !== false) podProblems.push(`${at}: allowPrivilegeEscalation is not false`);
      if ((sc.runAsNonRoot ?? podSc.runAsNonRoot) !== true) podProblems.push(`${at}: runAsNonRoot is not true`);
      const uid = sc.runAsUser ?? podSc.runAsUser;
      if (uid !== undefined && uid === 0) podProblems.push(`${at}: runAsUser is 0`);
      const drop = sc.capabilities?.drop ?? [];
      const add = sc.capabilities?.add ?? [];
      if (!drop.includes("ALL")) podProblems.push(`${at}: capabilities.drop lacks ALL`);
      const extra = add.filter((a) => a !== "NET_BIND_SERVICE");
      if (extra.length) podProblems.push(`${at}: capabilities.add has ${extra.join(", ")} (only NET_BIND_SERVICE)`);
      for (const ref of c.envFrom ?? []) {
        if (ref.configMapRef && !find("ConfigMap", ref.configMapRef.name)) {
          podProblems.push(`${at}: envFrom names ConfigMap/${ref.configMapRef.name}, which is not there`);
        }
        if (ref.secretRef && !find("Secret", ref.secretRef.name)) {
          podProblems.push(`${at}: envFrom names Secret/${ref.secretRef.name}, which is not there`);
        }
      }
      if (LONG_RUNNING.has(obj.kind) && !(pod.initContainers ?? []).includes(c)) {
        if (!c.readinessProbe) probeProblems.push(`${at}: no readinessProbe`);
        if (!c.livenessProbe) probeProblems.push(`${at}: no livenessProbe`);
        const named = new Set((c.ports ?? []).map((p) => p.name));
        for (const [kind, probe] of [["readiness", c.readinessProbe], ["liveness", c.livenessProbe], ["startup", c.startupProbe]]) {
          const port = probe?.httpGet?.port;
          if (typeof port === "string" && !named.has(port)) probeProblems.push(`${at}: ${kind} probe port ${port} is not a container port`);
        }
      }
    }
  }
  check("pods: non-root, read-only root, no privilege escalation, capabilities drop ALL and add only NET_BIND_SERVICE, RuntimeDefault seccomp", podProblems);
  check("long-running containers have readiness and liveness probes on their own ports", probeProblems);

  if (statefulSet) {
    const pod = podSpecOf(statefulSet);
    const c = (pod?.containers ?? []).find((x) => x.name === "mxhook") ?? pod?.containers?.[0];
    const ports = Object.fromEntries((c?.ports ?? []).map((p) => [p.name, p.containerPort]));
    const s = statefulSet.spec ?? {};

    const cmd = c?.lifecycle?.preStop?.exec?.command ?? [];
    check("StatefulSet/mxhook: preStop runs `mxhook drain`", [
      !(cmd.length === 2 && basename(cmd[0] ?? "") === "mxhook" && cmd[1] === "drain") &&
        `preStop.exec.command is ${JSON.stringify(cmd)}`,
    ]);

    const ms = (name) => {
      const v = config[name];
      if (v === undefined || v === "") return DEFAULT_MS[name];
      return /^\d+$/.test(v) ? Number(v) : NaN;
    };
    const drain = ms("DRAIN_TIMEOUT_MS");
    const grace = ms("SHUTDOWN_GRACE_MS");
    const need = (drain + grace) / 1000;
    const have = pod?.terminationGracePeriodSeconds ?? 30;
    check(`terminationGracePeriodSeconds ${have} >= (DRAIN_TIMEOUT_MS ${drain} + SHUTDOWN_GRACE_MS ${grace}) / 1000 = ${need}`, [
      !(Number.isFinite(need) && have >= need) && `terminationGracePeriodSeconds is ${have}, needs at least ${need}`,
    ]);

    const spoolDir = config.SPOOL_DIR || "/var/spool/mxhook";
    const templates = new Set((s.volumeClaimTemplates ?? []).map((t) => t.metadata?.name));
    const spoolMount = (c?.volumeMounts ?? []).find((m) => m.mountPath === spoolDir);
    check("StatefulSet/mxhook: one PVC per replica at SPOOL_DIR, kept on scale-down and delete", [
      !spoolMount && `nothing mounted at SPOOL_DIR ${spoolDir}`,
      spoolMount && !templates.has(spoolMount.name) && `${spoolDir} is not a volumeClaimTemplate`,
      s.persistentVolumeClaimRetentionPolicy?.whenScaled !== "Retain" && "persistentVolumeClaimRetentionPolicy.whenScaled is not Retain",
      s.persistentVolumeClaimRetentionPolicy?.whenDeleted !== "Retain" && "persistentVolumeClaimRetentionPolicy.whenDeleted is not Retain",
      !find("Service", s.serviceName) && `serviceName ${s.serviceName} is not a Service here`,
      !matches(s.selector?.matchLabels, s.template?.metadata?.labels) && "selector does not match the pod template",
    ]);

    check("mxhook's listen ports are the container ports the probes and Services use", [
      portNumber(config.METRICS_LISTEN) !== ports.metrics &&
        `METRICS_LISTEN ${config.METRICS_LISTEN} does not listen on the metrics port ${ports.metrics}`,
      !/^(0\.0\.0\.0|\[::\]):/.test(config.METRICS_LISTEN ?? "") && `METRICS_LISTEN ${config.METRICS_LISTEN} is not on every address (the kubelet probes the pod's)`,
      portNumber(config.SMTP_LISTEN || "0.0.0.0:25") !== ports.smtp &&
        `SMTP_LISTEN ${config.SMTP_LISTEN} does not listen on the smtp port ${ports.smtp}`,
    ]);

    const podLabels = s.template?.metadata?.labels;
    const serviceProblems = [];
    for (const svc of byKind("Service")) {
      if (!matches(svc.spec?.selector, podLabels) || !svc.spec?.selector) {
        serviceProblems.push(`Service/${svc.metadata.name} does not select the mxhook pods`);
      }
      for (const p of svc.spec?.ports ?? []) {
        if (typeof p.targetPort === "string" && !(p.targetPort in ports)) {
          serviceProblems.push(`Service/${svc.metadata.name} port ${p.name}: targetPort ${p.targetPort} is not a container port`);
        }
      }
    }
    const lb = find("Service", "mxhook");
    if (lb && (lb.spec?.type !== "LoadBalancer" || lb.spec?.externalTrafficPolicy !== "Local")) {
      serviceProblems.push("Service/mxhook is not a LoadBalancer with externalTrafficPolicy: Local");
    }
    for (const pdb of byKind("PodDisruptionBudget")) {
      if (!matches(pdb.spec?.selector?.matchLabels, podLabels)) serviceProblems.push(`PodDisruptionBudget/${pdb.metadata.name} does not select the mxhook pods`);
      if (pdb.spec?.maxUnavailable !== 1) serviceProblems.push(`PodDisruptionBudget/${pdb.metadata.name}: maxUnavailable is not 1`);
    }
    for (const sm of byKind("ServiceMonitor")) {
      const targets = byKind("Service").filter((svc) => matches(sm.spec?.selector?.matchLabels, svc.metadata?.labels));
      if (targets.length !== 1) serviceProblems.push(`ServiceMonitor/${sm.metadata.name} selects ${targets.length} Services (one wanted: mxhook-metrics)`);
      for (const ep of sm.spec?.endpoints ?? []) {
        for (const svc of targets) {
          if (!(svc.spec?.ports ?? []).some((p) => p.name === ep.port)) {
            serviceProblems.push(`ServiceMonitor/${sm.metadata.name}: Service/${svc.metadata.name} has no port named ${ep.port}`);
          }
        }
      }
      // The rules select job="mxhook": the job is the value of the jobLabel label.
      const jobLabel = sm.spec?.jobLabel;
      for (const svc of targets) {
        if (!jobLabel || svc.metadata?.labels?.[jobLabel] !== "mxhook") {
          serviceProblems.push(`ServiceMonitor/${sm.metadata.name}: the scrape job would not be "mxhook" (jobLabel ${jobLabel})`);
        }
      }
    }
    check("Services, PodDisruptionBudget and ServiceMonitor select the mxhook pods and ports", serviceProblems);
  }

  // The adopt Job, when given: the command and its two spools.
  for (const job of byKind("Job")) {
    const pod = podSpecOf(job);
    const c = pod?.containers?.[0];
    const cmd = [...(c?.command ?? []), ...(c?.args ?? [])];
    const adoptDir = cmd[3];
    const mounts = new Set((c?.volumeMounts ?? []).map((m) => m.mountPath));
    const spoolDir = config.SPOOL_DIR || "/var/spool/mxhook";
    check(`Job/${job.metadata.name}: runs \`mxhook spool adopt <dir>\` with both spools mounted`, [
      !(cmd.length === 4 && basename(cmd[0] ?? "") === "mxhook" && cmd[1] === "spool" && cmd[2] === "adopt") &&
        `command is ${JSON.stringify(cmd)}`,
      adoptDir && !mounts.has(adoptDir) && `nothing mounted at ${adoptDir}`,
      !mounts.has(spoolDir) && `nothing mounted at SPOOL_DIR ${spoolDir}`,
      pod?.restartPolicy !== "Never" && pod?.restartPolicy !== "OnFailure" && "restartPolicy is neither Never nor OnFailure",
    ]);
  }

  // The PrometheusRule carries exactly alerts.yml's groups.
  const rules = byKind("PrometheusRule");
  const groups = alertGroups(repo);
  const ruleProblems = [];
  for (const rule of rules) {
    if (!deepEqual(rule.spec?.groups, groups)) {
      ruleProblems.push(
        `PrometheusRule/${rule.metadata.name} spec.groups differ from ${ALERTS_FILE} groups ` +
          `(fix: node tests/kubernetes/validate.mjs --write-prometheusrule):\n` +
          yamlDiff(groups, ALERTS_FILE + " groups", rule.spec?.groups, RULE_FILE + " spec.groups"),
      );
    }
  }
  check(`PrometheusRule groups are exactly ${ALERTS_FILE}'s`, ruleProblems);
  return results;
}

// ---- main --------------------------------------------------------------------------------

function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.write) {
    writePrometheusRule(args.repo);
    return 0;
  }
  let objects = [];
  let failed = 0;
  let passed = 0;
  for (const file of [args.rendered, ...args.extra]) {
    try {
      objects = objects.concat(loadObjects(file));
    } catch (e) {
      console.log(`FAIL ${file}: ${e.message}`);
      failed++;
    }
  }
  for (const { file, value } of objects) {
    const problem = validateObject(value);
    const from = file === args.rendered ? "" : ` (${basename(file)})`;
    if (problem) {
      console.log(`FAIL ${describe(value)}${from}: ${problem}`);
      failed++;
    } else {
      console.log(`ok ${describe(value)}${from}`);
      passed++;
    }
  }
  const objectCount = objects.length;
  for (const { name, problems } of runChecks(objects, args.repo)) {
    if (problems.length) {
      console.log(`FAIL check: ${name}`);
      for (const p of problems) console.log(`  - ${p.replace(/\n/g, "\n    ")}`);
      failed++;
    } else {
      console.log(`ok check: ${name}`);
      passed++;
    }
  }
  console.log(`kubernetes manifests: ${objectCount} objects, ${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

try {
  process.exitCode = main();
} catch (e) {
  console.error(`validate.mjs: ${e.message}`);
  process.exitCode = 1;
}
