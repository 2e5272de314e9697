//! Which workload an observed process is, from node-local sources only: its cgroup path says
//! whether it is a kubelet container (and which pod UID and container id), kubelet's log
//! symlinks or the runtime's OCI bundle give the names. The API server is never asked, so the
//! agent needs no RBAC and keeps naming workloads while the control plane is down.

use std::{
    fmt, fs,
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use serde_json::Value;

pub const LABEL_NAMES: [&str; 5] = ["namespace", "pod", "container", "pid", "exe"];

/// Kubernetes' longest name (a DNS subdomain); a longer value is no name and would only
/// inflate every series.
const MAX_NAME_BYTES: usize = 253;
/// PATH_MAX is 4096, but a path that long is no use on a dashboard.
const MAX_EXE_BYTES: usize = 256;
/// Container ids as every CRI runtime writes them: 64 lowercase hex digits.
const CONTAINER_ID_LEN: usize = 64;
/// The short id `crictl` and `docker ps` show, so that fallback labels can be looked up.
const SHORT_ID_LEN: usize = 12;
/// Pod UIDs are UUIDs (36 bytes) or, for static pods, an MD5 in hex (32 bytes).
const MAX_POD_UID_LEN: usize = 64;
/// A bundle's config.json is some KiB; a larger file is not one and is not worth parsing.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The container name CRI-O gives a pod's sandbox ("infra") container, which runs no container
/// of the pod spec; used for containerd's sandbox too, which has no name at all.
const SANDBOX_CONTAINER: &str = "POD";

/// containerd's shim bundles, one directory per namespace (`k8s.io` is the CRI plugin's).
const CONTAINERD_TASKS: &str = "/run/containerd/io.containerd.runtime.v2.task";
/// containerd's shim bundles for the CRI plugin's `k8s.io` namespace.
const CONTAINERD_BUNDLES: &str = "/run/containerd/io.containerd.runtime.v2.task/k8s.io";
/// CRI-O's (containers/storage, overlay driver) run directories; the config is in `userdata/`.
const CRIO_CONTAINERS: &str = "/run/containers/storage/overlay-containers";
/// containers/storage's list of the containers podman made, with their names.
const PODMAN_CONTAINERS: &str = "/var/lib/containers/storage/overlay-containers/containers.json";
/// That list holds a few hundred bytes per container.
const MAX_CONTAINER_LIST_BYTES: u64 = 16 << 20;

/// Annotations that name the container, as (namespace, pod, container, container type) keys.
/// containerd: internal/cri/annotations/annotations.go (SandboxNamespace, SandboxName,
/// ContainerName, ContainerType), set by DefaultCRIAnnotations; a sandbox gets no container name.
/// CRI-O: copies kubelet's container labels into the spec's annotations
/// (internal/factory/container/container.go, SpecAddAnnotations); the keys are
/// k8s.io/kubelet/pkg/types/labels.go (KubernetesPodNamespaceLabel, KubernetesPodNameLabel,
/// KubernetesContainerNameLabel), and its sandbox is named "POD" (server/sandbox_run_linux.go,
/// oci.InfraContainerName); its container type key is internal/annotations/annotations.go.
const NAME_ANNOTATIONS: [[&str; 4]; 2] = [
    [
        "io.kubernetes.cri.sandbox-namespace",
        "io.kubernetes.cri.sandbox-name",
        "io.kubernetes.cri.container-name",
        "io.kubernetes.cri.container-type",
    ],
    [
        "io.kubernetes.pod.namespace",
        "io.kubernetes.pod.name",
        "io.kubernetes.container.name",
        "io.kubernetes.cri-o.ContainerType",
    ],
];

/// The labels that say which workload a series belongs to: a Kubernetes container's names, a
/// podman container's name (or short id) or a containerd container's namespace and id, with
/// its executable, or any other process by pid and executable. Unused fields are empty (Prometheus treats an empty label as absent).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub pid: String,
    pub exe: String,
}

impl WorkloadLabels {
    /// In [`LABEL_NAMES`] order.
    pub fn values(&self) -> [&str; 5] {
        [&self.namespace, &self.pod, &self.container, &self.pid, &self.exe]
    }

    /// A pod is always known for a container, even when its names are not.
    pub fn is_kubernetes(&self) -> bool {
        !self.pod.is_empty()
    }

    fn process(pid: u32, exe: &Path) -> Self {
        Self { pid: pid.to_string(), exe: exe_label(exe), ..Self::default() }
    }

    /// A container outside Kubernetes: no pid, so that its restarts continue its series.
    fn container(container: &str, exe: &Path) -> Self {
        Self { container: bounded(container, MAX_NAME_BYTES), exe: exe_label(exe), ..Self::default() }
    }
}

impl From<PodNames> for WorkloadLabels {
    fn from(names: PodNames) -> Self {
        Self {
            namespace: bounded(&names.namespace, MAX_NAME_BYTES),
            pod: bounded(&names.pod, MAX_NAME_BYTES),
            container: bounded(&names.container, MAX_NAME_BYTES),
            ..Self::default()
        }
    }
}

/// The `exe` label of executable `exe`.
fn exe_label(exe: &Path) -> String {
    let exe = exe.to_string_lossy();
    // The kernel appends this to /proc/PID/exe once the file is replaced, e.g. by an
    // upgrade; the series should stay that of the same program.
    bounded(exe.strip_suffix(" (deleted)").unwrap_or(&exe), MAX_EXE_BYTES)
}

impl fmt::Display for WorkloadLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_kubernetes() {
            write!(f, "{}/{}/{}", self.namespace, self.pod, self.container)
        } else if !self.container.is_empty() {
            let namespace =
                if self.namespace.is_empty() { String::new() } else { format!("{}/", self.namespace) };
            write!(f, "container {namespace}{} ({})", self.container, self.exe)
        } else {
            write!(f, "pid {} ({})", self.pid, self.exe)
        }
    }
}

/// A Kubernetes container as its cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    /// With dashes, as the API shows it, whichever cgroup driver wrote it.
    pub pod_uid: String,
    /// 64 lowercase hex digits, without the runtime's prefix.
    pub container_id: String,
}

/// Parses the text of /proc/PID/cgroup. Returns the container if any line's path is a kubelet
/// pod's container.
///
/// Every controller line (v1), the unified line (v2) or both (hybrid) may carry the path, so
/// the first line whose path parses wins. Leading `/..` segments (a path seen from inside
/// another cgroup namespace) and anything above the pod (kind's or a custom cgroup root) are
/// skipped; anything below the container (a cgroup it made itself) still belongs to it.
pub fn container_of(cgroup: &str) -> Option<ContainerRef> {
    cgroup_paths(cgroup).find_map(container_in_path)
}

/// The cgroup path of every line of /proc/PID/cgroup's text (`<id>:<controllers>:<path>`).
fn cgroup_paths(cgroup: &str) -> impl Iterator<Item = &str> {
    cgroup.lines().filter_map(|line| line.splitn(3, ':').nth(2))
}

fn container_in_path(path: &str) -> Option<ContainerRef> {
    let mut segments: Vec<&str> = path.trim_end().split('/').filter(|segment| !segment.is_empty()).collect();
    let hidden = segments.iter().take_while(|segment| **segment == "..").count();
    segments.drain(..hidden);
    segments.windows(2).enumerate().find_map(|(i, pair)| {
        let pod_uid = pod_uid_in(pair[0], &segments[..i], hidden > 0)?;
        let container_id = container_id_in(pair[1])?;
        Some(ContainerRef { pod_uid, container_id: container_id.to_owned() })
    })
}

/// The pod UID in a kubelet pod cgroup's name: `kubepods[-<qos>]-pod<uid>.slice` (systemd
/// driver; a slice name repeats its parents' and systemd reserves `-`, so the UID's dashes are
/// written `_`) or `pod<uid>` below `kubepods` (cgroupfs driver). Seen from the cgroup
/// namespace of a pod's container (`root_hidden`), `kubepods` and even the QoS level may be
/// above the root: `pod<uid>` then counts when nothing but those is visible above it.
fn pod_uid_in(segment: &str, ancestors: &[&str], root_hidden: bool) -> Option<String> {
    if let Some(stem) = segment.strip_suffix(".slice") {
        let (parents, uid) = stem.rsplit_once("-pod")?;
        if !parents.split('-').any(|parent| parent == "kubepods") || uid.contains('-') {
            return None;
        }
        return valid_pod_uid(&uid.replace('_', "-"));
    }
    let uid = segment.strip_prefix("pod")?;
    let below_kubepods = ancestors.contains(&"kubepods")
        || root_hidden
            && ancestors.iter().all(|parent| matches!(*parent, "kubepods" | "burstable" | "besteffort"));
    if !below_kubepods {
        return None;
    }
    valid_pod_uid(uid)
}

fn valid_pod_uid(uid: &str) -> Option<String> {
    let valid = !uid.is_empty()
        && uid.len() <= MAX_POD_UID_LEN
        && uid.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
    valid.then(|| uid.to_owned())
}

/// The container id in a container cgroup's name: `<prefix><id>.scope` (systemd driver;
/// `cri-containerd-`, `crio-` or `docker-` for cri-dockerd) or `[crio-]<id>` (cgroupfs).
/// CRI-O's `crio-conmon-<id>.scope` holds the container's monitor, not the container, and is
/// rejected because `conmon-<id>` is no id.
fn container_id_in(segment: &str) -> Option<&str> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = ["cri-containerd-", "crio-", "docker-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    is_container_id(id).then_some(id)
}

/// The id of a podman container whose cgroup is in /proc/PID/cgroup's text: `libpod-<id>`
/// (cgroupfs manager, below `libpod_parent`) or `libpod-<id>.scope` (systemd, below
/// `machine.slice`). Its monitor's `libpod-conmon-<id>` is no container.
pub fn podman_container_of(cgroup: &str) -> Option<&str> {
    cgroup_paths(cgroup)
        .flat_map(|path| path.trim_end().split('/'))
        .filter_map(|segment| segment.strip_prefix("libpod-"))
        .map(|name| name.strip_suffix(".scope").unwrap_or(name))
        .find(|id| is_container_id(id))
}

/// A containerd container outside Kubernetes (`ctr run`, nerdctl with cgroupfs): its cgroup
/// is `/<namespace>/<id>`, and containerd keeps its bundle at `<tasks>/<namespace>/<id>`.
/// The bundle must be there: a cgroup of two segments alone names nothing.
pub fn containerd_container_of<'a>(cgroup: &'a str, tasks: &Path) -> Option<(&'a str, &'a str)> {
    let identifier = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_NAME_BYTES
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    cgroup_paths(cgroup).filter_map(|path| path.trim_end().strip_prefix('/')?.split_once('/')).find(
        |(namespace, id)| {
            identifier(namespace)
                && identifier(id)
                && tasks.join(namespace).join(id).join("config.json").is_file()
        },
    )
}

/// The name podman gave container `id`, from containers/storage's list (`containers.json`).
pub fn podman_name(list: &Path, id: &str) -> Option<String> {
    let bytes = read_capped(list, MAX_CONTAINER_LIST_BYTES).ok()?;
    let containers: Value = serde_json::from_slice(&bytes).ok()?;
    let container = containers.as_array()?.iter().find(|c| c["id"] == id)?;
    container["names"].get(0)?.as_str().map(str::to_owned)
}

fn is_container_id(id: &str) -> bool {
    id.len() == CONTAINER_ID_LEN && id.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNames {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl PodNames {
    fn bounded(namespace: &str, pod: &str, container: &str) -> Self {
        Self {
            namespace: bounded(namespace, MAX_NAME_BYTES),
            pod: bounded(pod, MAX_NAME_BYTES),
            container: bounded(container, MAX_NAME_BYTES),
        }
    }
}

/// Names from kubelet's log symlinks: kubelet creates
/// `/var/log/containers/<pod>_<namespace>_<container>-<64-hex-id>.log` for every container
/// (all CRI runtimes). Reads directory entry NAMES only (never follows the links), so a
/// container's log contents never reach the agent.
///
/// Names cannot contain `_`, so the three parts split unambiguously; `-` may be in any name, so
/// the id is after the last one. kubelet cuts names longer than 255 bytes, id included: such a
/// container is not found here. Other entries (other ids, malformed names) are skipped.
pub fn names_from_container_logs(dir: &Path, container_id: &str) -> io::Result<Option<PodNames>> {
    if !is_container_id(container_id) {
        return Ok(None);
    }
    let context =
        |source: io::Error| io::Error::new(source.kind(), format!("cannot list {}: {source}", dir.display()));
    for entry in fs::read_dir(dir).map_err(context)? {
        let name = entry.map_err(context)?.file_name();
        if let Some(names) = name.to_str().and_then(|name| names_in_log_link(name, container_id)) {
            return Ok(Some(names));
        }
    }
    Ok(None)
}

fn names_in_log_link(file_name: &str, container_id: &str) -> Option<PodNames> {
    let (front, id) = file_name.strip_suffix(".log")?.rsplit_once('-')?;
    if id != container_id {
        return None;
    }
    let mut parts = front.split('_');
    let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || pod.is_empty() || namespace.is_empty() || container.is_empty() {
        return None;
    }
    Some(PodNames::bounded(namespace, pod, container))
}

/// Names from the container runtime's OCI bundle config (node-local files): containerd
/// `<root>/<container_id>/config.json`, CRI-O `<root>/<container_id>/userdata/config.json`;
/// both layouts are tried under every root, and both runtimes' annotation keys (see
/// `NAME_ANNOTATIONS`) in every file. Unreadable or foreign files just mean no names.
pub fn names_from_runtime(bundle_roots: &[PathBuf], container_id: &str) -> Option<PodNames> {
    // The id becomes a path component: only a real id may, never `..` or `/`.
    if !is_container_id(container_id) {
        return None;
    }
    bundle_roots
        .iter()
        .flat_map(|root| {
            let bundle = root.join(container_id);
            [bundle.join("config.json"), bundle.join("userdata").join("config.json")]
        })
        .find_map(|path| names_in_bundle_config(&path))
}

fn names_in_bundle_config(path: &Path) -> Option<PodNames> {
    let text = match read_capped(path, MAX_CONFIG_BYTES) {
        Ok(text) => text,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                log::debug!("cannot read {}: {e}", path.display());
            }
            return None;
        }
    };
    let config: Value = match serde_json::from_slice(&text) {
        Ok(config) => config,
        Err(e) => {
            log::debug!("{} is not an OCI runtime config: {e}", path.display());
            return None;
        }
    };
    let annotations = config.get("annotations")?.as_object()?;
    let annotation =
        |key: &str| annotations.get(key).and_then(Value::as_str).filter(|value| !value.is_empty());
    NAME_ANNOTATIONS.iter().find_map(|[namespace, pod, container, container_type]| {
        let container = annotation(container)
            .or_else(|| (annotation(container_type) == Some("sandbox")).then_some(SANDBOX_CONTAINER))?;
        Some(PodNames::bounded(annotation(namespace)?, annotation(pod)?, container))
    })
}

fn read_capped(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    fs::File::open(path)?.take(max + 1).read_to_end(&mut text)?;
    if text.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok(text)
}

/// Where the agent looks (configurable for tests and for DaemonSets that mount host paths
/// elsewhere).
#[derive(Clone, Debug)]
pub struct Sources {
    /// The host's /proc: the observed pids are host pids.
    pub proc_root: PathBuf,
    /// kubelet's log symlinks.
    pub container_logs: PathBuf,
    /// Roots searched for `<id>/config.json` and `<id>/userdata/config.json`.
    pub runtime_bundles: Vec<PathBuf>,
    /// containers/storage's container list, for podman containers' names.
    pub podman_containers: PathBuf,
    /// containerd's task bundles, by namespace and container id.
    pub containerd_tasks: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            container_logs: PathBuf::from("/var/log/containers"),
            runtime_bundles: vec![PathBuf::from(CONTAINERD_BUNDLES), PathBuf::from(CRIO_CONTAINERS)],
            podman_containers: PathBuf::from(PODMAN_CONTAINERS),
            containerd_tasks: PathBuf::from(CONTAINERD_TASKS),
        }
    }
}

/// The labels of process `pid` running `exe`: Kubernetes names when its cgroup is a kubelet
/// container's (container logs first: they cover every runtime; then the runtime's bundle).
/// A pod's container that no source names is still told apart from its neighbours by pod UID
/// and short container id, with a warning, rather than passed off as a bare process. Outside
/// Kubernetes, a podman container is labelled by its name (where podman's state is readable)
/// or short id, a containerd container by its namespace and id, each with its executable;
/// any other process by pid and executable.
pub fn resolve(sources: &Sources, pid: u32, exe: &Path) -> WorkloadLabels {
    let cgroup_path = sources.proc_root.join(pid.to_string()).join("cgroup");
    let cgroup = fs::read_to_string(&cgroup_path).unwrap_or_else(|e| {
        log::debug!("cannot read {}: {e}; labelling pid {pid} by its executable", cgroup_path.display());
        String::new()
    });
    let Some(ContainerRef { pod_uid, container_id }) = container_of(&cgroup) else {
        if let Some(id) = podman_container_of(&cgroup) {
            let name = podman_name(&sources.podman_containers, id);
            return WorkloadLabels::container(name.as_deref().unwrap_or(&id[..SHORT_ID_LEN]), exe);
        }
        if let Some((namespace, id)) = containerd_container_of(&cgroup, &sources.containerd_tasks) {
            let namespace = bounded(namespace, MAX_NAME_BYTES);
            return WorkloadLabels { namespace, ..WorkloadLabels::container(id, exe) };
        }
        return WorkloadLabels::process(pid, exe);
    };
    let from_logs = names_from_container_logs(&sources.container_logs, &container_id).unwrap_or_else(|e| {
        log::debug!("{e}");
        None
    });
    if let Some(names) = from_logs.or_else(|| names_from_runtime(&sources.runtime_bundles, &container_id)) {
        return names.into();
    }
    log::warn!(
        "pid {pid} runs in container {container_id} of pod {pod_uid}, but neither {} nor the runtime bundles \
         under {:?} name it: labelling it by pod UID and short container id; mount the host's {} into mcp-observe",
        sources.container_logs.display(),
        sources.runtime_bundles,
        sources.container_logs.display(),
    );
    WorkloadLabels {
        pod: pod_uid,
        container: container_id[..SHORT_ID_LEN].to_owned(),
        ..WorkloadLabels::default()
    }
}

/// At most `max` bytes of `value`, cut on a character boundary.
fn bounded(value: &str, max: usize) -> String {
    let mut end = value.len().min(max);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    const ID: &str = "4f1c2b3a5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7a8";
    const OTHER_ID: &str = "0a9b8c7d6e5f40312a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091";
    const UID: &str = "1f6b2c3d-4e5f-6789-abcd-ef0123456789";
    const UID_SYSTEMD: &str = "1f6b2c3d_4e5f_6789_abcd_ef0123456789";

    fn expected(uid: &str) -> Option<ContainerRef> {
        Some(ContainerRef { pod_uid: uid.to_owned(), container_id: ID.to_owned() })
    }

    /// A cgroup v1 file: every controller names the same path.
    fn v1(path: &str) -> String {
        [
            "12:hugetlb",
            "11:cpuset",
            "10:perf_event",
            "9:net_cls,net_prio",
            "8:memory",
            "7:devices",
            "6:pids",
            "5:blkio",
            "4:freezer",
            "3:cpu,cpuacct",
            "2:rdma",
            "1:name=systemd",
        ]
        .iter()
        .map(|controller| format!("{controller}:{path}\n"))
        .collect()
    }

    #[test]
    fn systemd_containerd_burstable_v2() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_of(&text), expected(UID));
    }

    #[test]
    fn systemd_containerd_besteffort_v1_hybrid() {
        // Hybrid: v1 controllers plus an unused unified hierarchy.
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
        );
        let text = format!("{}0::/\n", v1(&path));
        assert_eq!(container_of(&text), expected(UID));
    }

    #[test]
    fn systemd_containerd_guaranteed() {
        let text = format!("0::/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(container_of(&text), expected(UID));
    }

    #[test]
    fn systemd_crio_and_conmon() {
        let pod =
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice");
        assert_eq!(container_of(&format!("0::{pod}/crio-{ID}.scope\n")), expected(UID));
        // A cgroup the container made below its own is still the container.
        assert_eq!(container_of(&format!("0::{pod}/crio-{ID}.scope/container\n")), expected(UID));
        assert_eq!(container_of(&format!("0::{pod}/crio-conmon-{ID}.scope\n")), None);
        assert_eq!(container_of(&v1(&format!("{pod}/crio-conmon-{ID}.scope"))), None);
    }

    #[test]
    fn systemd_cri_dockerd() {
        let text = v1(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/docker-{ID}.scope"
        ));
        assert_eq!(container_of(&text), expected(UID));
    }

    #[test]
    fn cgroupfs_driver() {
        assert_eq!(container_of(&v1(&format!("/kubepods/burstable/pod{UID}/{ID}"))), expected(UID));
        assert_eq!(container_of(&format!("0::/kubepods/pod{UID}/{ID}\n")), expected(UID));
        assert_eq!(container_of(&format!("0::/kubepods/besteffort/pod{UID}/crio-{ID}\n")), expected(UID));
        assert_eq!(container_of(&format!("0::/kubepods/besteffort/pod{UID}/crio-conmon-{ID}\n")), None);
        // A static pod's UID is the hash of its manifest.
        let hash = "8d3a8e4bd6a0f5c1b2e7c9d04f6a1b3e";
        assert_eq!(container_of(&format!("0::/kubepods/burstable/pod{hash}/{ID}\n")), expected(hash));
        // pod<uid> counts only below kubepods.
        assert_eq!(container_of(&format!("0::/machine/pod{UID}/{ID}\n")), None);
    }

    #[test]
    fn nested_cgroup_root() {
        // A kind node: kubelet's cgroup root is /kubelet, inside the node container's cgroup.
        let text = format!(
            "0::/system.slice/docker-{OTHER_ID}.scope/kubelet.slice/kubelet-kubepods.slice/\
             kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_of(&text), expected(UID));
    }

    #[test]
    fn other_cgroup_namespace() {
        let text = format!(
            "0::/../../kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_of(&text), expected(UID));
        assert_eq!(container_of(&format!("0::/../kubepods/pod{UID}/{ID}\n")), expected(UID));
        // Read from a burstable pod's container: kubepods, even the QoS level, is above the root.
        assert_eq!(container_of(&format!("0::/../../pod{UID}/{ID}\n")), expected(UID));
        assert_eq!(container_of(&format!("0::/../../../besteffort/pod{UID}/{ID}\n")), expected(UID));
        assert_eq!(container_of(&format!("0::/../../machine/pod{UID}/{ID}\n")), None);
        // `..` only counts as a hidden root at the start.
        assert_eq!(container_of(&format!("0::/machine/../pod{UID}/{ID}\n")), None);
    }

    #[test]
    fn first_parsing_line_wins() {
        let text = format!(
            "12:memory:/\n11:cpu:/user.slice\n0::/kubepods/pod{UID}/{ID}\n1:name=systemd:/kubepods/pod{UID}/{OTHER_ID}\n"
        );
        assert_eq!(container_of(&text), expected(UID));
    }

    #[test]
    fn not_kubernetes() {
        for text in [
            "0::/user.slice/user-0.slice/session-3.scope\n".to_owned(),
            format!("0::/system.slice/docker-{ID}.scope\n"),
            v1(&format!("/docker/{ID}")),
            "0::/\n".to_owned(),
            v1("/"),
            String::new(),
            "garbage\n::\n0:\n".to_owned(),
        ] {
            assert_eq!(container_of(&text), None, "{text}");
        }
    }

    #[test]
    fn malformed_ids() {
        let pod = format!("0::/kubepods/pod{UID}");
        assert_eq!(container_of(&format!("{pod}/{}\n", &ID[1..])), None);
        assert_eq!(container_of(&format!("{pod}/{}\n", ID.to_uppercase())), None);
        assert_eq!(container_of(&format!("{pod}/{ID}0\n")), None);
        assert_eq!(container_of(&format!("0::/kubepods/pod/{ID}\n")), None);
        assert_eq!(container_of(&format!("0::/kubepods/pod{UID}!/{ID}\n")), None);
        assert_eq!(container_of(&format!("0::/kubepods/pod{}/{ID}\n", "a".repeat(65))), None);
    }

    #[test]
    fn bounded_cuts_on_char_boundary() {
        assert_eq!(bounded("short", MAX_NAME_BYTES), "short");
        let long = "é".repeat(200); // 400 bytes
        let cut = bounded(&long, MAX_NAME_BYTES);
        assert_eq!(cut.len(), 252);
        assert!(long.starts_with(&cut));
        let exe = format!("/{}", "ü".repeat(3000));
        let labels = WorkloadLabels::process(7, Path::new(&exe));
        assert!(labels.exe.len() <= MAX_EXE_BYTES && labels.exe.len() >= MAX_EXE_BYTES - 1);
        assert!(exe.starts_with(&labels.exe));
    }

    #[test]
    fn process_labels() {
        let labels = WorkloadLabels::process(4242, Path::new("/usr/local/bin/mcp-proxy (deleted)"));
        assert_eq!(labels.values(), ["", "", "", "4242", "/usr/local/bin/mcp-proxy"]);
        assert!(!labels.is_kubernetes());
        assert_eq!(labels.to_string(), "pid 4242 (/usr/local/bin/mcp-proxy)");
    }

    #[test]
    fn podman_containers_by_cgroup_and_name() {
        let cgroupfs =
            format!("9:name=systemd:/libpod_parent/libpod-{ID}\n8:pids:/libpod_parent/libpod-{ID}\n");
        assert_eq!(podman_container_of(&cgroupfs), Some(ID));
        assert_eq!(
            podman_container_of(&format!("0::/machine.slice/libpod-{ID}.scope/container\n")),
            Some(ID)
        );
        assert_eq!(podman_container_of(&format!("0::/machine.slice/libpod-conmon-{ID}.scope\n")), None);
        assert_eq!(podman_container_of(&format!("0::/system.slice/docker-{ID}.scope\n")), None);
        let dir = TempDir::new("podman");
        let list = dir.0.join("containers.json");
        fs::write(
            &list,
            format!(r#"[{{"id":"{OTHER_ID}","names":["other"]}},{{"id":"{ID}","names":["proxy-a"]}}]"#),
        )
        .unwrap();
        assert_eq!(podman_name(&list, ID).as_deref(), Some("proxy-a"));
        assert_eq!(podman_name(&dir.0.join("absent.json"), ID), None);
        // containerd outside Kubernetes: a cgroup of two segments, and the task's bundle.
        let tasks = dir.0.join("tasks");
        let ctr = "8:pids:/tools/proxy-b\n";
        assert_eq!(containerd_container_of(ctr, &tasks), None, "no bundle, no container");
        fs::create_dir_all(tasks.join("tools/proxy-b")).unwrap();
        fs::write(tasks.join("tools/proxy-b/config.json"), "{}").unwrap();
        assert_eq!(containerd_container_of(ctr, &tasks), Some(("tools", "proxy-b")));
        assert_eq!(containerd_container_of("0::/user.slice/user-1000.slice\n", &tasks), None);
        let labels = WorkloadLabels::container("proxy-a", Path::new("/usr/bin/mcp"));
        assert_eq!(labels.values(), ["", "", "proxy-a", "", "/usr/bin/mcp"]);
        assert!(!labels.is_kubernetes());
        assert_eq!(labels.to_string(), "container proxy-a (/usr/bin/mcp)");
    }

    #[test]
    fn kubernetes_labels() {
        let names = PodNames { namespace: "tools".into(), pod: "mcp-0".into(), container: "proxy".into() };
        let labels = WorkloadLabels::from(names);
        assert_eq!(labels.values(), ["tools", "mcp-0", "proxy", "", ""]);
        assert!(labels.is_kubernetes());
        assert_eq!(labels.to_string(), "tools/mcp-0/proxy");
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("mcp-observe-workload-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn link(dir: &Path, name: &str) {
        // Dangling on purpose: only the name may be read.
        symlink(format!("/var/log/pods/absent/{name}"), dir.join(name)).unwrap();
    }

    #[test]
    fn container_logs_with_decoys() {
        let dir = TempDir::new("logs");
        for name in [
            format!("coredns-5d78c9869d-x7k2p_kube-system_coredns-{OTHER_ID}.log"),
            format!("mcp-gateway-7f9c-abcde_tools_proxy-sidecar-{ID}.log.1"),
            format!("extra_part_mcp-gateway_tools_proxy-{ID}.log"),
            format!("mcp-gateway_tools-{ID}.log"),
            format!("mcp-gateway__proxy-{ID}.log"),
            format!("mcp-gateway_tools_proxy-{}.log", &ID[..63]),
            format!("mcp-gateway_tools_proxy-{ID}"),
            format!("mcp-gateway-7f9c-abcde_tools_proxy-sidecar-{ID}.log"),
        ] {
            link(&dir.0, &name);
        }
        assert_eq!(
            names_from_container_logs(&dir.0, ID).unwrap(),
            Some(PodNames {
                namespace: "tools".into(),
                pod: "mcp-gateway-7f9c-abcde".into(),
                container: "proxy-sidecar".into()
            })
        );
        assert_eq!(
            names_from_container_logs(&dir.0, OTHER_ID).unwrap().map(|names| names.namespace),
            Some("kube-system".into())
        );
        let absent = "f".repeat(64);
        assert_eq!(names_from_container_logs(&dir.0, &absent).unwrap(), None);
        assert_eq!(names_from_container_logs(&dir.0, "../etc").unwrap(), None);
        let error = names_from_container_logs(&dir.0.join("missing"), ID).unwrap_err();
        assert!(error.to_string().contains("missing"), "{error}");
    }

    fn write_config(path: &Path, annotations: Value) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let config = serde_json::json!({
            "ociVersion": "1.1.0",
            "process": { "args": ["/usr/local/bin/mcp-proxy"], "cwd": "/" },
            "root": { "path": "rootfs" },
            "annotations": annotations,
        });
        fs::write(path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }

    #[test]
    fn containerd_bundle() {
        let root = TempDir::new("containerd");
        write_config(
            &root.0.join(ID).join("config.json"),
            serde_json::json!({
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.container-name": "proxy",
                "io.kubernetes.cri.image-name": "ghcr.io/example/mcp-proxy:1.2",
                "io.kubernetes.cri.sandbox-id": OTHER_ID,
                "io.kubernetes.cri.sandbox-name": "mcp-gateway-0",
                "io.kubernetes.cri.sandbox-namespace": "tools",
                "io.kubernetes.cri.sandbox-uid": UID,
            }),
        );
        write_config(
            &root.0.join(OTHER_ID).join("config.json"),
            serde_json::json!({
                "io.kubernetes.cri.container-type": "sandbox",
                "io.kubernetes.cri.sandbox-id": OTHER_ID,
                "io.kubernetes.cri.sandbox-name": "mcp-gateway-0",
                "io.kubernetes.cri.sandbox-namespace": "tools",
            }),
        );
        let roots = [root.0.join("absent"), root.0.clone()];
        let names = |pod: &str, container: &str| {
            Some(PodNames { namespace: "tools".into(), pod: pod.into(), container: container.into() })
        };
        assert_eq!(names_from_runtime(&roots, ID), names("mcp-gateway-0", "proxy"));
        assert_eq!(names_from_runtime(&roots, OTHER_ID), names("mcp-gateway-0", SANDBOX_CONTAINER));
        assert_eq!(names_from_runtime(&roots, &"e".repeat(64)), None);
        assert_eq!(names_from_runtime(&roots, "../../etc"), None);
    }

    #[test]
    fn crio_bundle() {
        let root = TempDir::new("crio");
        write_config(
            &root.0.join(ID).join("userdata").join("config.json"),
            serde_json::json!({
                "io.container.manager": "cri-o",
                "io.kubernetes.container.hash": "5f2c3b1a",
                "io.kubernetes.container.name": "proxy",
                "io.kubernetes.cri-o.ContainerType": "container",
                "io.kubernetes.cri-o.SandboxName": "k8s_mcp-gateway-0_tools_1f6b2c3d_0",
                "io.kubernetes.pod.name": "mcp-gateway-0",
                "io.kubernetes.pod.namespace": "tools",
                "io.kubernetes.pod.uid": UID,
            }),
        );
        assert_eq!(
            names_from_runtime(std::slice::from_ref(&root.0), ID),
            Some(PodNames {
                namespace: "tools".into(),
                pod: "mcp-gateway-0".into(),
                container: "proxy".into()
            })
        );
    }

    #[test]
    fn bundle_values_are_bounded_and_bad_configs_ignored() {
        let root = TempDir::new("bounded");
        let long = "p".repeat(1000);
        write_config(
            &root.0.join(ID).join("config.json"),
            serde_json::json!({
                "io.kubernetes.cri.container-name": long,
                "io.kubernetes.cri.sandbox-name": long,
                "io.kubernetes.cri.sandbox-namespace": "tools",
            }),
        );
        let names = names_from_runtime(std::slice::from_ref(&root.0), ID).unwrap();
        assert_eq!((names.pod.len(), names.container.len()), (MAX_NAME_BYTES, MAX_NAME_BYTES));

        fs::create_dir_all(root.0.join(OTHER_ID)).unwrap();
        fs::write(root.0.join(OTHER_ID).join("config.json"), b"{ not json").unwrap();
        assert_eq!(names_from_runtime(std::slice::from_ref(&root.0), OTHER_ID), None);
        write_config(
            &root.0.join(OTHER_ID).join("config.json"),
            serde_json::json!({ "io.kubernetes.cri.sandbox-name": "mcp-gateway-0" }),
        );
        assert_eq!(names_from_runtime(std::slice::from_ref(&root.0), OTHER_ID), None);
    }

    #[test]
    fn resolve_outside_kubernetes() {
        let pid = std::process::id();
        let exe = fs::read_link("/proc/self/exe").unwrap();
        let sources = Sources::default();
        let labels = resolve(&sources, pid, &exe);
        let own_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if container_of(&own_cgroup).is_some() {
            // The tests themselves run in a Kubernetes pod.
            assert!(labels.is_kubernetes(), "{labels:?}");
            return;
        }
        assert_eq!(labels.values(), ["", "", "", &pid.to_string(), &*exe.to_string_lossy()]);
        assert_eq!(labels.to_string(), format!("pid {pid} ({})", exe.display()));
    }

    #[test]
    fn resolve_kubernetes_container() {
        let host = TempDir::new("resolve");
        let pid = 31337;
        fs::create_dir_all(host.0.join("proc").join(pid.to_string())).unwrap();
        fs::write(
            host.0.join("proc").join(pid.to_string()).join("cgroup"),
            format!("0::/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"),
        )
        .unwrap();
        let logs = host.0.join("logs");
        fs::create_dir_all(&logs).unwrap();
        let mut sources = Sources {
            proc_root: host.0.join("proc"),
            container_logs: logs.clone(),
            runtime_bundles: vec![host.0.join("bundles")],
            podman_containers: host.0.join("containers.json"),
            containerd_tasks: host.0.join("tasks"),
        };
        let exe = Path::new("/usr/local/bin/mcp-proxy");

        // No source names it: pod UID and short id.
        let labels = resolve(&sources, pid, exe);
        assert_eq!(labels.values(), ["", UID, &ID[..SHORT_ID_LEN], "", ""]);
        assert!(labels.is_kubernetes());

        // The runtime's bundle names it.
        write_config(
            &host.0.join("bundles").join(ID).join("config.json"),
            serde_json::json!({
                "io.kubernetes.cri.container-name": "proxy",
                "io.kubernetes.cri.sandbox-name": "from-bundle",
                "io.kubernetes.cri.sandbox-namespace": "tools",
            }),
        );
        assert_eq!(resolve(&sources, pid, exe).values(), ["tools", "from-bundle", "proxy", "", ""]);

        // The log symlink is preferred.
        link(&logs, &format!("from-logs_tools_proxy-{ID}.log"));
        assert_eq!(resolve(&sources, pid, exe).to_string(), "tools/from-logs/proxy");

        // An unreadable logs directory falls through to the bundle.
        sources.container_logs = host.0.join("absent");
        assert_eq!(resolve(&sources, pid, exe).pod, "from-bundle");

        // No cgroup file (the process exited): pid and exe.
        assert_eq!(
            resolve(&sources, pid + 1, exe).values(),
            ["", "", "", "31338", "/usr/local/bin/mcp-proxy"]
        );
    }

    #[test]
    fn default_sources() {
        let sources = Sources::default();
        assert_eq!(sources.proc_root, Path::new("/proc"));
        assert_eq!(sources.container_logs, Path::new("/var/log/containers"));
        assert_eq!(
            sources.runtime_bundles,
            [
                PathBuf::from("/run/containerd/io.containerd.runtime.v2.task/k8s.io"),
                PathBuf::from("/run/containers/storage/overlay-containers"),
            ]
        );
    }
}
