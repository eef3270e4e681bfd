//! Test support: real control planes, a namespace and Karpenter objects per
//! test, and running the `rayform` binary the way a user does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::ApiResource;
use kube::{Client, Config};
use serde_json::{Value, json};

/// Runs a test once per state backend: both must behave alike.
macro_rules! on_both_backends {
    ($test:ident) => {
        mod $test {
            #[tokio::test]
            async fn file() {
                super::$test(crate::support::Backend::File).await;
            }

            #[tokio::test]
            async fn kubernetes() {
                super::$test(crate::support::Backend::Kubernetes).await;
            }
        }
    };
}
pub(crate) use on_both_backends;

pub const TOKEN_PREFIX: &str = "hf_rayformTEST";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Profile {
    V1,
    V1beta1,
    V1alpha5,
    /// Karpenter v1, plus a node that runs pods and the real KubeRay operator.
    Nodes,
    /// Karpenter v0.32: v1alpha5 and v1beta1 served side by side; the test's
    /// objects are a Provisioner and an AWSNodeTemplate, as before a migration.
    V032,
    /// Karpenter v0.33.6-v0.37: karpenter.sh/v1 served beside a stored
    /// v1beta1 (our own two-version CRDs); the test's objects are v1beta1's.
    V037,
    /// EKS Auto Mode: Karpenter built in, NodePools beside EKS's built-in
    /// `general-purpose` and `system`, node classes of `eks.amazonaws.com/v1`
    /// and no EC2NodeClass. The test's objects are copies of `general-purpose`
    /// and of the NodeClass `default`: a pool and a class of the user's own.
    AutoMode,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::V1 => "v1",
            Profile::V1beta1 => "v1beta1",
            Profile::V1alpha5 => "v1alpha5",
            Profile::Nodes => "nodes",
            Profile::V032 => "v0.32",
            Profile::V037 => "v0.37",
            Profile::AutoMode => "automode",
        }
    }

    /// The names of the pool-like and class-like objects the cluster has
    /// before the test, of which the test's own are copies.
    pub fn fixtures(self) -> (&'static str, &'static str) {
        match self {
            Profile::AutoMode => ("general-purpose", "default"),
            _ => ("default", "default"),
        }
    }

    /// (apiVersion, kind) of the pool-like and class-like Karpenter objects.
    pub fn pool(self) -> (&'static str, &'static str) {
        match self {
            Profile::V1 | Profile::Nodes | Profile::AutoMode => ("karpenter.sh/v1", "NodePool"),
            Profile::V1beta1 | Profile::V037 => ("karpenter.sh/v1beta1", "NodePool"),
            Profile::V1alpha5 | Profile::V032 => ("karpenter.sh/v1alpha5", "Provisioner"),
        }
    }

    pub fn class(self) -> (&'static str, &'static str) {
        match self {
            Profile::V1 | Profile::Nodes => ("karpenter.k8s.aws/v1", "EC2NodeClass"),
            Profile::AutoMode => ("eks.amazonaws.com/v1", "NodeClass"),
            Profile::V1beta1 | Profile::V037 => ("karpenter.k8s.aws/v1beta1", "EC2NodeClass"),
            Profile::V1alpha5 | Profile::V032 => ("karpenter.k8s.aws/v1alpha1", "AWSNodeTemplate"),
        }
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The kubeconfig of the control plane for a profile, started once per test run.
pub fn kubeconfig(profile: Profile) -> PathBuf {
    static CLUSTERS: [OnceLock<PathBuf>; 7] = [const { OnceLock::new() }; 7];
    CLUSTERS[profile as usize]
        .get_or_init(|| {
            let var = format!(
                "RAYFORM_TEST_KUBECONFIG_{}",
                profile.name().replace('.', "").to_uppercase()
            );
            if let Some(path) = std::env::var_os(&var) {
                return PathBuf::from(path);
            }
            let pid = std::process::id().to_string();
            let mut args = vec!["up", "--watch-pid", &pid, "--profile"];
            match profile {
                Profile::Nodes => args.extend(["v1", "--nodes"]),
                p => args.push(p.name()),
            }
            let out = Command::new(repo().join("scripts/testcluster"))
                .args(&args)
                .output()
                .expect("run scripts/testcluster");
            assert!(
                out.status.success(),
                "scripts/testcluster up --profile {} failed:\n{}",
                profile.name(),
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout
                .lines()
                .find_map(|l| l.strip_prefix("export KUBECONFIG="))
                .expect("testcluster printed KUBECONFIG");
            PathBuf::from(line.trim())
        })
        .clone()
}

pub async fn client(kubeconfig: &Path, context: Option<&str>) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kc, &options)
        .await
        .expect("kubeconfig config");
    Client::try_from(config).expect("client")
}

pub fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "NodePool" => "nodepools",
        "NodeClaim" => "nodeclaims",
        "KWOKNodeClass" => "kwoknodeclasses",
        "EC2NodeClass" => "ec2nodeclasses",
        "NodeClass" => "nodeclasses",
        "Provisioner" => "provisioners",
        "AWSNodeTemplate" => "awsnodetemplates",
        "RayService" => "rayservices",
        "Secret" => "secrets",
        "ConfigMap" => "configmaps",
        "Namespace" => "namespaces",
        "Pod" => "pods",
        "RayCluster" => "rayclusters",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "Lease" => "leases",
        "ValidatingAdmissionPolicy" => "validatingadmissionpolicies",
        "ValidatingAdmissionPolicyBinding" => "validatingadmissionpolicybindings",
        other => panic!("no plural for {other}"),
    };
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Where a test's rayform keeps its state (`RAYFORM_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    File,
    Kubernetes,
}

/// Everything one test needs: a namespace, Karpenter objects of its own, a
/// working directory for stacks and state, and a unique token.
pub struct Env {
    pub profile: Profile,
    pub backend: Backend,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
    pub ns: String,
    pub pool: String,
    pub class: String,
    pub token: String,
    pub client: Client,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle),
            "expected {needle:?} on stdout:\n{}",
            self.stdout
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, needle: &str) -> &Run {
        assert!(
            self.stderr.contains(needle),
            "expected {needle:?} on stderr:\n{}",
            self.stderr
        );
        self
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The one stdout line that starts with `prefix`, its indent taken off.
    /// Where a whole line is the contract (a plan's summary, a change's
    /// headline, an exit message), the test compares it whole: a substring
    /// passes a line that grew a wrong count or a stray word.
    #[track_caller]
    pub fn line_starting(&self, prefix: &str) -> &str {
        only_line(&self.stdout, prefix, "stdout")
    }

    /// As [`Run::line_starting`], on stderr.
    #[track_caller]
    pub fn stderr_line_starting(&self, prefix: &str) -> &str {
        only_line(&self.stderr, prefix, "stderr")
    }

    /// The first line of the error the run ended with, `Error: ` taken off;
    /// its help lines follow it and are checked on their own.
    #[track_caller]
    pub fn error_line(&self) -> &str {
        let line = self.stderr_line_starting("Error: ");
        &line["Error: ".len()..]
    }

    /// stdout as JSON, for comparing fields by value.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// The only line of `text` starting with `prefix` once its indent is off;
/// none or two is a failure, so a summary printed twice cannot pass.
#[track_caller]
fn only_line<'a>(text: &'a str, prefix: &str, stream: &str) -> &'a str {
    let found: Vec<&str> = text
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with(prefix))
        .collect();
    match found[..] {
        [line] => line,
        _ => panic!(
            "expected one line starting with {prefix:?} on {stream}, found {}:\n{text}",
            found.len()
        ),
    }
}

impl Env {
    pub async fn new(profile: Profile, test: &str) -> Env {
        Env::on(Backend::File, profile, test).await
    }

    /// An environment whose rayform runs keep their state in `backend` (for
    /// the kubernetes backend: in the test's namespace, the stack's own).
    pub async fn on(backend: Backend, profile: Profile, test: &str) -> Env {
        Env::on_cluster(backend, profile, kubeconfig(profile), test).await
    }

    /// An environment on a control plane of the test's own (see [`OwnCluster`]).
    pub async fn on_cluster(
        backend: Backend,
        profile: Profile,
        kubeconfig: PathBuf,
        test: &str,
    ) -> Env {
        let client = client(&kubeconfig, None).await;
        let suffix = &rayform::util::random_hex(3).unwrap();
        let base: String = test
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(30)
            .collect::<String>()
            .to_lowercase();
        let ns = format!("{base}-{suffix}");
        let env = Env {
            profile,
            backend,
            kubeconfig,
            dir: tempfile::tempdir().expect("tempdir"),
            pool: format!("{base}-{suffix}"),
            class: format!("{base}-{suffix}"),
            ns: ns.clone(),
            token: format!("{TOKEN_PREFIX}{}", rayform::util::random_hex(12).unwrap()),
            client,
        };
        env.apply_as("test-setup", "v1", "Namespace", None, &ns, json!({}))
            .await;
        let (pool_fixture, class_fixture) = profile.fixtures();
        for ((api_version, kind), fixture) in [
            (profile.pool(), pool_fixture),
            (profile.class(), class_fixture),
        ] {
            let mut spec = env
                .get(api_version, kind, None, fixture)
                .await
                .unwrap_or_else(|| panic!("the fixture `{fixture}` exists"))["spec"]
                .take();
            // The test's pool launches its nodes from the test's class.
            for reference in ["/template/spec/nodeClassRef/name", "/providerRef/name"] {
                if let Some(name) = spec.pointer_mut(reference) {
                    *name = json!(env.class);
                }
            }
            env.apply_as(
                "karpenter-install",
                api_version,
                kind,
                None,
                &env.pool,
                json!({ "spec": spec }),
            )
            .await;
        }
        env
    }

    fn api(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let r = resource(api_version, kind);
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &r),
            None => Api::all_with(self.client.clone(), &r),
        }
    }

    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        self.api(api_version, kind, ns)
            .get_opt(name)
            .await
            .expect("get")
            .map(|o| serde_json::to_value(o).expect("json"))
    }

    /// Deletes an object as someone other than rayform would.
    pub async fn delete(&self, api_version: &str, kind: &str, ns: Option<&str>, name: &str) {
        self.api(api_version, kind, ns)
            .delete(name, &Default::default())
            .await
            .expect("delete");
    }

    /// Server-side apply as some other field manager (an installer, a human, a controller).
    pub async fn apply_as(
        &self,
        manager: &str,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        mut body: Value,
    ) -> Value {
        body["apiVersion"] = json!(api_version);
        body["kind"] = json!(kind);
        body["metadata"]["name"] = json!(name);
        if let Some(ns) = ns {
            body["metadata"]["namespace"] = json!(ns);
        }
        let o = self
            .api(api_version, kind, ns)
            .patch(
                name,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {name} as {manager}: {e}"));
        serde_json::to_value(o).expect("json")
    }

    pub async fn merge_as(
        &self,
        manager: &str,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        body: Value,
    ) {
        let params = PatchParams {
            field_manager: Some(manager.into()),
            ..Default::default()
        };
        self.api(api_version, kind, ns)
            .patch(name, &params, &Patch::Merge(&body))
            .await
            .expect("merge patch");
    }

    /// A status write, as a controller makes one (Karpenter updates its pools' status).
    pub async fn merge_status_as(
        &self,
        manager: &str,
        (api_version, kind): (&str, &str),
        name: &str,
        body: Value,
    ) {
        let params = PatchParams {
            field_manager: Some(manager.into()),
            ..Default::default()
        };
        self.api(api_version, kind, None)
            .patch_status(name, &params, &Patch::Merge(&body))
            .await
            .expect("merge patch of the status");
    }

    pub async fn pool_spec(&self) -> Value {
        let (a, k) = self.profile.pool();
        self.get(a, k, None, &self.pool).await.expect("pool")["spec"].clone()
    }

    pub async fn class_spec(&self) -> Value {
        let (a, k) = self.profile.class();
        self.get(a, k, None, &self.class).await.expect("class")["spec"].clone()
    }

    pub async fn karpenter_specs(&self) -> (Value, Value) {
        (self.pool_spec().await, self.class_spec().await)
    }

    /// How far the API server's audit log (scripts/testcluster) has got.
    pub fn audit_mark(&self) -> usize {
        self.audit_lines().len()
    }

    /// Requests that reached the API server since `mark` about this test's
    /// objects (its namespace, its pool and class): counted on the wire.
    pub async fn requests_since(&self, mark: usize) -> Vec<Value> {
        // The server writes an entry once the response is complete.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        self.audit_lines()
            .into_iter()
            .skip(mark)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|e| {
                let object = &e["objectRef"];
                object["namespace"] == json!(self.ns)
                    || (object["namespace"].is_null()
                        && (object["name"] == json!(self.pool)
                            || object["name"] == json!(self.class)))
            })
            .collect()
    }

    fn audit_lines(&self) -> Vec<String> {
        let log = self
            .kubeconfig
            .parent()
            .expect("the kubeconfig sits in the cluster's directory")
            .join("audit.log");
        std::fs::read_to_string(log)
            .expect("the test cluster writes an audit log")
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    /// The mission stack (stacks/mistral-7b.toml), pointed at this test's namespace and Karpenter objects.
    pub fn mission_stack(&self, stack_name: &str) -> String {
        let text =
            std::fs::read_to_string(repo().join("stacks/mistral-7b.toml")).expect("mission stack");
        let manifest = repo().join("stacks/mistral-7b.rayservice.yaml");
        std::fs::copy(&manifest, self.path("mistral-7b.rayservice.yaml")).expect("copy manifest");
        let text = text
            .replace("name = \"mistral-7b\"", &format!("name = \"{stack_name}\""))
            .replace(
                "namespace = \"default\"",
                &format!("namespace = \"{}\"", self.ns),
            )
            .replace("[nodepool.default]", &format!("[nodepool.{}]", self.pool))
            .replace(
                "[nodeclass.default]",
                &format!("[nodeclass.{}]", self.class),
            );
        let file = format!("{stack_name}.toml");
        self.write(&file, &text);
        file
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rayform"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HUGGING_FACE_HUB_TOKEN", &self.token)
            .env("NO_COLOR", "1")
            .env(
                "RAYFORM_BACKEND",
                match self.backend {
                    Backend::File => "file",
                    Backend::Kubernetes => "kubernetes",
                },
            )
            .env_remove("RAYFORM_CONTEXT")
            .env_remove("RAYFORM_STATE_NAMESPACE")
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs rayform again and again while the state is locked (a Lease
    /// left by a killed run expires after its duration), then returns that run.
    pub fn rayform_once_unlocked(&self, args: &[&str], limit: std::time::Duration) -> Run {
        let started = std::time::Instant::now();
        loop {
            let run = self.rayform(args);
            if !run.stderr.contains("state is locked") || started.elapsed() > limit {
                return run;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    /// `rayform apply STACK --auto-approve --no-wait` running in the
    /// background, working on `parallelism` resources at a time.
    pub fn spawn_apply(&self, stack: &str, parallelism: &str) -> Running {
        Running::spawn(self.command(&[
            "apply",
            stack,
            "--auto-approve",
            "--no-wait",
            "--parallelism",
            parallelism,
        ]))
    }

    pub fn rayform(&self, args: &[&str]) -> Run {
        self.rayform_in(self.dir.path(), args)
    }

    /// Runs rayform from another working directory (inside the test's own).
    pub fn rayform_in(&self, cwd: &Path, args: &[&str]) -> Run {
        let mut cmd = self.command(args);
        Run::from(cmd.current_dir(cwd).output().expect("run rayform"))
    }

    /// The state of the stack in `<stack_name>.toml`, as `rayform state pull`
    /// reads it from whichever backend keeps it (a killed run's journal included).
    pub fn state(&self, stack_name: &str) -> Value {
        let pulled = self
            .rayform(&["state", "pull", &format!("{stack_name}.toml")])
            .ok();
        serde_json::from_str(&pulled.stdout).expect("state is JSON")
    }

    /// Counts of live objects in the test namespace carrying a label.
    pub async fn count(&self, api_version: &str, kind: &str) -> usize {
        self.api(api_version, kind, Some(&self.ns))
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .len()
    }
}

/// A control plane for one test alone, for what would disturb the others
/// (restarting its API server); stopped when dropped.
pub struct OwnCluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

impl OwnCluster {
    pub fn up(profile: Profile) -> OwnCluster {
        let pid = std::process::id().to_string();
        let out = Command::new(repo().join("scripts/testcluster"))
            .args(["up", "--watch-pid", &pid, "--profile", profile.name()])
            .output()
            .expect("run scripts/testcluster");
        assert!(
            out.status.success(),
            "testcluster up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let var = |name: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(|v| PathBuf::from(v.trim()))
                .expect("testcluster printed its exports")
        };
        OwnCluster {
            dir: var("TESTCLUSTER_DIR"),
            kubeconfig: var("KUBECONFIG"),
        }
    }

    /// Stops kube-apiserver and starts it again; returns once it is ready.
    pub fn restart_apiserver(&self) {
        let out = Command::new(repo().join("scripts/testcluster"))
            .arg("restart-apiserver")
            .arg(&self.dir)
            .output()
            .expect("run scripts/testcluster");
        assert!(
            out.status.success(),
            "restart-apiserver: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/testcluster"))
            .arg("down")
            .arg(&self.dir)
            .output();
    }
}

/// Runs a clean-up from a `Drop`, which cannot await: on a thread with a
/// runtime of its own, and with a client of its own (a test's client is
/// driven by the test's runtime, which is blocked in the drop).
pub fn cleanup_on_a_thread(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(cleanup);
    })
    .join();
}

/// A test's pods are real processes on the node: its namespace goes with it.
impl Drop for Env {
    fn drop(&mut self) {
        if self.profile != Profile::Nodes {
            return;
        }
        let (kubeconfig, ns) = (self.kubeconfig.clone(), self.ns.clone());
        cleanup_on_a_thread(async move {
            let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
                Api::all(client(&kubeconfig, None).await);
            let _ = namespaces.delete(&ns, &Default::default()).await;
        });
    }
}

/// Every text that must never hold the token: outputs, files.
#[track_caller]
pub fn assert_no_token(token: &str, texts: &BTreeMap<String, String>) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(token);
    for (what, text) in texts {
        assert!(!text.contains(token), "the token leaked into {what}");
        assert!(
            !text.contains(&b64),
            "the base64 of the token leaked into {what}"
        );
    }
}

/// Ray heads are heavy on two cores: at most two are starting at once.
pub async fn ray_turn() -> tokio::sync::SemaphorePermit<'static> {
    static TURNS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    TURNS
        .acquire()
        .await
        .expect("the semaphore is never closed")
}

/// A running `rayform` whose stderr is collected line by line as it comes.
pub struct Running {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    /// The threads reading stderr and stdout, done at end of file.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        use std::io::{BufRead as _, Read as _};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (err, out) = (child.stderr.take().unwrap(), child.stdout.take().unwrap());
        let l = lines.clone();
        let err_reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let o = stdout.clone();
        let out_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::BufReader::new(out).read_to_string(&mut text);
            o.lock().unwrap().push_str(&text);
        });
        Running {
            child,
            lines,
            stdout,
            readers: vec![err_reader, out_reader],
        }
    }

    /// Waits until a stderr line contains `needle`.
    pub async fn until(&self, needle: &str, limit: std::time::Duration) {
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "no line with {needle:?} within {limit:?}; stderr so far:\n{}",
            self.lines.lock().unwrap().join("\n")
        );
    }

    /// Ctrl-C, as a terminal sends it.
    pub fn interrupt(&self) {
        self.signal("INT");
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to release anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the exit, and for what it wrote up to its last line: a
    /// fixed pause could end before a loaded machine has read the error
    /// printed at exit (seen in a clean-clone CI run).
    pub fn finish(mut self) -> Run {
        let status = self.child.wait().expect("wait");
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Run {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout.lock().unwrap().clone(),
            stderr: self.lines.lock().unwrap().join("\n"),
        }
    }
}

/// Many ConfigMaps, so a kill can land with some of them done and not others.
pub fn many_config_maps(env: &Env, stack_name: &str, count: usize) -> String {
    let mut text = format!(
        "[stack]\nname = \"{stack_name}\"\nnamespace = \"{}\"\n",
        env.ns
    );
    for i in 0..count {
        text.push_str(&format!(
            "\n[manifest.cm{i}]\nobject = {{ apiVersion = \"v1\", kind = \"ConfigMap\", data = {{ index = \"{i}\" }} }}\n"
        ));
    }
    let file = format!("{stack_name}.toml");
    env.write(&file, &text);
    file
}
