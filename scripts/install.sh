#!/usr/bin/env bash
# Installs podcr on a node: the two binaries, and a containerd drop-in that adds the `podcr` runtime
# handler next to the node's own (the default runtime is never touched). Records what it did, so that
# --uninstall reverses exactly that and nothing else. Needs root for a real node.
#
#   scripts/install.sh [--prefix DIR] [--root DIR] [--bin-dir DIR] [--containerd-version X.Y] [--force]
#   scripts/install.sh --uninstall [--root DIR] [--force]
#
#   --prefix DIR      binaries go to DIR/bin (default /usr/local); must be on containerd's PATH
#   --root DIR        install into the file tree at DIR (a node's / mounted elsewhere, e.g. /host in
#                     the DaemonSet, or a scratch tree); paths written into configs are as seen from
#                     DIR, i.e. without it
#   --bin-dir DIR     where the binaries come from (default: bin/ next to this script in a release
#                     tarball, else target/release of the source tree)
#   --containerd-version X.Y
#                     the node's containerd (default: `containerd --version`, run inside --root);
#                     2.2 and later read
#                     /etc/containerd/conf.d/*.toml by default, 2.1 needs an `imports` line
#   --force           replace files podcr did not install; uninstall while podcr shims still run
#
# What it changes (and records in <root>/var/lib/podcr/install.manifest):
#   <prefix>/bin/podcr, <prefix>/bin/containerd-shim-podcr-v1
#   /etc/containerd/conf.d/podcr.toml          the runtime handler (runtime_type io.containerd.podcr.v1,
#                                              sandboxer shim); nothing else
#   /etc/containerd/config.toml                only when containerd would not read the drop-in otherwise:
#                                              the drop-in's path is added to `imports` (a new line, or
#                                              appended to a one-line array); created with just that when
#                                              there is no config.toml on containerd 2.1
# containerd reads its configuration only at start: restart it afterwards (running containers keep
# running; a containerd restart does not stop shims).
set -euo pipefail

prog=install.sh
log() { echo "$prog: $*" >&2; }
die() { log "error: $*"; exit 1; }

prefix=/usr/local
root=/
bin_dir=""
cd_version=""
force=0
uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
    --containerd-version) cd_version=${2:?--containerd-version needs X.Y}; shift 2 ;;
    --force) force=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

case "$prefix" in /*) ;; *) die "--prefix must be absolute: $prefix" ;; esac
[ -d "$root" ] || die "--root $root is not a directory"
root=$(cd "$root" && pwd)
# `R path` is where a node path lives in the tree being changed.
R() { if [ "$root" = / ]; then echo "$1"; else echo "$root$1"; fi; }

manifest_path=/var/lib/podcr/install.manifest
manifest=$(R "$manifest_path")
config_path=/etc/containerd/config.toml
dropin_path=/etc/containerd/conf.d/podcr.toml
shims=(podcr containerd-shim-podcr-v1)

sha() { sha256sum "$1" | awk '{print $1}'; }

# Shims of this installation that still run: uninstalling under them would strand their pods.
running_shims() {
  local exe pid target
  target=$(R "$prefix/bin/containerd-shim-podcr-v1")
  for pid in /proc/[0-9]*; do
    exe=$(readlink "$pid/exe" 2>/dev/null) || continue
    # A replaced binary shows as "<path> (deleted)".
    [ "${exe% (deleted)}" = "$target" ] && echo "${pid#/proc/}"
  done
  return 0
}

# ---------------------------------------------------------------------------------------------
# Uninstall: undo each manifest line, last first; a file changed since install is kept and named.
# ---------------------------------------------------------------------------------------------
if [ "$uninstall" = 1 ]; then
  [ -f "$manifest" ] || die "nothing to uninstall: no $manifest"
  prefix=$(awk '$1 == "prefix" {print $2}' "$manifest")
  pids=$(running_shims | tr '\n' ' ')
  if [ -n "$pids" ] && [ "$force" != 1 ]; then
    die "podcr shims still run (pids $pids): delete the podcr pods first, or pass --force"
  fi
  tac "$manifest" | while read -r kind path a; do
    f=$(R "$path")
    case "$kind" in
      file)
        if [ ! -e "$f" ]; then
          log "already gone: $path"
        elif [ "$(sha "$f")" = "$a" ] || [ "$force" = 1 ]; then
          rm -f "$f"; log "removed $path"
        else
          log "kept $path: changed since podcr installed it (remove it yourself, or rerun with --force)"
        fi ;;
      import-line)
        # `a` is the exact line added; remove that line only.
        if grep -qxF "$a" "$f" 2>/dev/null; then
          line=$(grep -nxF "$a" "$f" | head -n1 | cut -d: -f1)
          sed -i "${line}d" "$f"; log "removed the imports line from $path"
        else
          log "the imports line podcr added to $path is no longer there; left $path as it is"
        fi ;;
      import-entry)
        # `a` is the drop-in path appended to an existing one-line imports array.
        a_re=$(printf '%s' "$a" | sed 's/[.[\*^$|]/\\&/g')
        if grep -qE "^imports[[:space:]]*=.*['\"]$a_re['\"]" "$f" 2>/dev/null; then
          sed -i -E "/^imports[[:space:]]*=/ { s|,[[:space:]]*['\"]$a_re['\"]||; s|['\"]$a_re['\"][[:space:]]*,?[[:space:]]*|| }" "$f"
          log "removed $a from the imports of $path"
        else
          log "$a is no longer in the imports of $path; left $path as it is"
        fi ;;
      created-config)
        # Created by the install with one imports line; removed only if nothing else was added.
        # Created with just `version` and the imports line: removed whole unless someone added to
        # it since, in which case only the imports line goes.
        if [ -f "$f" ] && [ "$(sha "$f")" = "$a" ]; then
          rm -f "$f"; log "removed $path (podcr created it)"
        elif [ -f "$f" ] && grep -qxF "imports = ['$dropin_path']" "$f"; then
          line=$(grep -nxF "imports = ['$dropin_path']" "$f" | head -n1 | cut -d: -f1)
          sed -i "${line}d" "$f"; log "removed the imports line from $path (kept the file: it was changed)"
        fi ;;
      dir)
        rmdir "$f" 2>/dev/null && log "removed empty $path" || true ;;
      prefix|version) ;;
      *) log "unknown manifest line: $kind $path" ;;
    esac
  done
  rm -f "$manifest"
  rmdir "$(dirname "$manifest")" 2>/dev/null || true
  log "uninstalled. Restart containerd so it forgets the podcr runtime handler:"
  log "  systemctl restart containerd"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Install
# ---------------------------------------------------------------------------------------------
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "$bin_dir" ]; then
  # A release tarball has bin/ next to install.sh; the source tree has scripts/ and target/.
  if [ -x "$here/bin/containerd-shim-podcr-v1" ]; then bin_dir="$here/bin"
  else bin_dir="$here/../target/release"; fi
fi
for b in "${shims[@]}"; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found: build with \`cargo build --release -p podcr-shim -p podcr-cli\` or pass --bin-dir"
done

if [ -z "$cd_version" ]; then
  # The node's containerd: inside --root when installing into a mounted node file system.
  if [ "$root" = / ]; then run_cd=(containerd); else run_cd=(chroot "$root" containerd); fi
  cd_out=$("${run_cd[@]}" --version 2>/dev/null) ||
    die "cannot run ${run_cd[*]} --version: install containerd 2.1 or later first (or pass --containerd-version)"
  cd_version=$(grep -oE ' v?[0-9]+\.[0-9]+' <<<"$cd_out" | head -n1 | tr -d ' v')
fi
major=${cd_version%%.*}; minor=${cd_version#*.}; minor=${minor%%.*}
[[ "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]] || die "cannot read containerd version \"$cd_version\""
if [ "$major" -lt 2 ] || { [ "$major" = 2 ] && [ "$minor" -lt 1 ]; }; then
  die "containerd $cd_version is too old: podcr needs 2.1 or later (shim sandboxes, config version 3)"
fi

# Refuse before changing anything.
existing=$( [ -f "$manifest" ] && cat "$manifest" || true )
ours() { grep -q "^file $1 " <<<"$existing"; }
for p in "$prefix/bin/podcr" "$prefix/bin/containerd-shim-podcr-v1" "$dropin_path"; do
  if [ -e "$(R "$p")" ] && ! ours "$p" && [ "$force" != 1 ]; then
    die "$p exists and was not installed by this script: remove it or pass --force"
  fi
done
if [ -n "$existing" ]; then
  old_prefix=$(awk '$1 == "prefix" {print $2}' "$manifest")
  [ "$old_prefix" = "$prefix" ] || die "already installed with --prefix $old_prefix: uninstall first"
fi

# Does containerd read the drop-in without help? 2.2+ imports conf.d/*.toml in its default
# configuration; a config.toml of the admin's replaces that default, so it must name the drop-in.
config=$(R "$config_path")
config_action=none
if [ -f "$config" ]; then
  if grep -qE "^imports[[:space:]]*=.*['\"](/etc/containerd/conf\.d/\*\.toml|$dropin_path)['\"]" "$config"; then
    config_action=none
  elif grep -qE '^imports[[:space:]]*=[[:space:]]*\[[^]]*\][[:space:]]*(#.*)?$' "$config"; then
    config_action=append
  elif grep -qE '^imports[[:space:]]*=' "$config"; then
    die "$config_path has an imports array over several lines: add '$dropin_path' to it yourself, then rerun"
  else
    config_action=add-line
  fi
elif [ "$major" = 2 ] && [ "$minor" -lt 2 ]; then
  config_action=create
fi

# From here on, every change is recorded first, so a failure half-way can still be uninstalled.
mkdir -p "$(dirname "$manifest")"
new_manifest="$manifest.new"
: >"$new_manifest"
echo "prefix $prefix" >>"$new_manifest"
echo "version containerd-$cd_version" >>"$new_manifest"
# Keep the config edit of an earlier install (rerun = upgrade).
grep -E '^(import-line|import-entry|created-config) ' <<<"$existing" >>"$new_manifest" || true

record_dir() { # dirs this install makes (ancestors too), so uninstall removes them when empty
  local p="" part
  local IFS=/
  for part in ${1#/}; do
    p="$p/$part"
    if [ ! -d "$(R "$p")" ]; then mkdir "$(R "$p")"; echo "dir $p" >>"$new_manifest"; fi
  done
}
record_dir "$prefix/bin"
record_dir /etc/containerd
record_dir /etc/containerd/conf.d
grep -E '^dir ' <<<"$existing" >>"$new_manifest" || true

for b in "${shims[@]}"; do
  dest=$(R "$prefix/bin/$b")
  # Install next to it and rename: a shim running from the old binary keeps its inode.
  install -m 0755 "$bin_dir/$b" "$dest.podcr-new"
  mv -f "$dest.podcr-new" "$dest"
  echo "file $prefix/bin/$b $(sha "$dest")" >>"$new_manifest"
  log "installed $prefix/bin/$b"
done

dropin=$(R "$dropin_path")
cat >"$dropin.podcr-new" <<EOF
# Written by podcr's scripts/install.sh; \`install.sh --uninstall\` removes it.
# Adds the CRI runtime handler "podcr" (RuntimeClass handler: podcr). The node's default runtime
# is unchanged: only pods that ask for podcr get it.
version = 3

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.podcr]
  # -> $prefix/bin/containerd-shim-podcr-v1, found on containerd's PATH
  runtime_type = 'io.containerd.podcr.v1'
  # The shim is the pod's sandbox controller: one shim per pod, no pause container.
  sandboxer = 'shim'
  # Deliberately no options table: containerd 2.1/2.2 fail StartContainer for a non-runc runtime
  # with options under sandboxer = 'shim' (fixed in 2.3.1, containerd PR 13360).
EOF
mv -f "$dropin.podcr-new" "$dropin"
echo "file $dropin_path $(sha "$dropin")" >>"$new_manifest"
log "wrote $dropin_path"

case "$config_action" in
  none) ;;
  add-line)
    line="imports = ['$dropin_path']"
    # A top-level key: it must come before the first [table]; after `version` reads naturally.
    if grep -qE '^version[[:space:]]*=' "$config"; then
      n=$(grep -nE '^version[[:space:]]*=' "$config" | head -n1 | cut -d: -f1)
      sed -i "${n}a $line" "$config"
    else
      sed -i "1i $line" "$config"
    fi
    echo "import-line $config_path $line" >>"$new_manifest"
    log "added $line to $config_path" ;;
  append)
    # The array holds no `]` (checked above), so the first `]` closes it.
    sed -i -E "/^imports[[:space:]]*=/ { s|^(imports[[:space:]]*=[[:space:]]*\[)([^]]*)\]|\1\2, '$dropin_path']|; s|\[[[:space:]]*,[[:space:]]*|[| }" "$config"
    echo "import-entry $config_path $dropin_path" >>"$new_manifest"
    log "added '$dropin_path' to the imports of $config_path" ;;
  create)
    printf "version = 3\nimports = ['%s']\n" "$dropin_path" >"$config"
    echo "created-config $config_path $(sha "$config")" >>"$new_manifest"
    log "created $config_path importing the drop-in (containerd $cd_version has no default imports)" ;;
esac

mv -f "$new_manifest" "$manifest"

# Prerequisites podcr needs at run time (warnings: the binaries are in place either way).
if [ "$root" = / ]; then
  command -v runc >/dev/null || log "warning: runc not found on PATH (podcr needs runc 1.3 or later)"
  command -v criu >/dev/null || log "warning: criu not found on PATH (checkpoint/restore needs CRIU 4.2 or later)"
fi
log "done. Restart containerd so it loads the podcr runtime handler (running containers keep running):"
log "  systemctl restart containerd"
log "then label the node for the RuntimeClass (examples/runtimeclass.yaml):"
log "  kubectl label node \"\$(hostname)\" podcr.io/runtime=installed"
