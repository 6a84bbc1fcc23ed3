//! The real `hookhost` binary as a child process, with its JSON log lines
//! collected, for tests that kill it or read its logs.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Proc {
    pub child: Child,
    pub addr: String,
    pub logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Proc {
    pub fn start(config: &Path, data: &Path, plugins: &Path) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hookhost"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .arg("--plugins-dir")
            .arg(plugins)
            .env("HOOKHOST_LOG_FORMAT", "json")
            .env("HOOKHOST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hookhost");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "hookhost listening" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                    }
                    l.lock().unwrap().push(v);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server announces its address");
        Proc { child, addr, logs }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Graceful stop with SIGTERM; returns whether it exited by itself.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    /// Log lines of the host itself whose message contains `text`.
    pub fn count_lines(&self, text: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(text)))
            .count()
    }

    pub fn plugin_lines(&self, plugin: &str) -> Vec<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["target"] == "plugin" && v["plugin"] == plugin)
            .map(|v| v["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
