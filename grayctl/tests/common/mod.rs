//! What grayctl's tests share: a real redis-server per test, and running grayctl against it.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Redis {
    pub port: u16,
    server: Child,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let server = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (make deps installs it)");
        let redis = Redis { port, server };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    pub fn grayctl(&self, args: &[&str]) -> Output {
        self.grayctl_with(args, &[], None)
    }

    pub fn grayctl_with(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_grayctl"));
        cmd.args(args)
            .env("GRAY_REDIS", self.url())
            .env("USER", "tester")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
pub fn ok(out: Output) -> String {
    assert_eq!(
        code(&out),
        0,
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

#[track_caller]
pub fn refused(out: Output) -> String {
    assert_eq!(
        code(&out),
        1,
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    stderr(&out)
}

/// The nginx the gateways run, when not Debian's (`make test-openresty` gives OpenResty's).
const NGINX_ENV: &str = "GRAY_TEST_NGINX";

/// A real gateway: Debian's nginx (or `GRAY_TEST_NGINX`) with the built module (`make build`).
pub struct Gateway {
    pub master: Child,
    dir: std::path::PathBuf,
}

impl Gateway {
    pub fn start(redis: &Redis, name: &str, options: &str) -> Gateway {
        let http = format!(
            r#"init_worker_by_lua_block {{
        require("gray").configure{{ redis = "{url}", {options} }}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200; }}
    }}"#,
            url = redis.url(),
            port = free_port(),
        );
        Gateway::start_with(name, 1, &http)
    }

    /// A gateway of `workers` workers whose http block holds `http` besides what every test
    /// gateway has (its files in its own directory, the module on the Lua path).
    pub fn start_with(name: &str, workers: u32, http: &str) -> Gateway {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let module = format!("{root}/target/release/libgray.so");
        assert!(
            std::path::Path::new(&module).exists(),
            "{module} is missing: run make build"
        );
        let dir = std::env::temp_dir().join(format!("grayctl-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Debian's nginx loads the Lua module; another (OpenResty's, GRAY_TEST_NGINX) has it built in.
        let nginx = std::env::var(NGINX_ENV).ok();
        let modules = if nginx.is_some() {
            ""
        } else {
            "load_module /usr/lib/nginx/modules/ndk_http_module.so;\nload_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"
        };
        let conf = format!(
            r#"{modules}
worker_processes {workers};
error_log {dir}/error.log notice;
pid {dir}/nginx.pid;
events {{}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    lua_package_cpath "{root}/target/release/lib?.so;;";
    {http}
}}
"#,
            dir = dir.display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let master = Command::new(nginx.as_deref().unwrap_or("nginx"))
            .args([
                "-p",
                &dir.display().to_string(),
                "-c",
                "nginx.conf",
                "-g",
                "daemon off;",
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (make deps installs it)");
        Gateway { master, dir }
    }

    /// The gateway's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// The pids of the gateway's workers.
    pub fn workers(&self) -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.master.id()))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The worker's pid, once nginx has started it.
    pub fn worker(&self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.master.id()))
                    .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                return pid.parse().unwrap();
            }
            assert!(Instant::now() < deadline, "nginx started no worker");
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, pid: u32, signal: &str) {
        Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
    }

    pub fn stop(&mut self) {
        let worker = self.worker();
        self.signal(worker, "CONT");
        self.signal(self.master.id(), "TERM");
        let _ = self.master.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.master.try_wait() {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
