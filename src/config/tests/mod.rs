//! Tests of the config, by concern; the fixture they share is here.

use super::*;
use tempfile::TempDir;

mod api;
mod folder;
mod load;
mod secret;
mod target;

/// A temporary config directory with a few folders to point at.
struct Fixture {
    _dir: TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        for sub in ["in", "in/sub", "out", "state"] {
            fs::create_dir(root.join(sub)).unwrap();
        }
        fs::write(root.join("file.txt"), "x").unwrap();
        Fixture { _dir: dir, root }
    }

    fn file(&self) -> PathBuf {
        self.root.join("config.yaml")
    }

    /// `{dir}` in the YAML stands for the fixture directory.
    fn parse_env(&self, yaml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let yaml = yaml.replace("{dir}", &self.root.display().to_string());
        let env = |name: &str| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        };
        Config::from_yaml(&yaml, &self.file(), &env)
    }

    fn parse(&self, yaml: &str) -> Config {
        self.parse_env(yaml, &[]).unwrap()
    }

    /// The problems, with the fixture directory written back as `{dir}`.
    fn problems(&self, yaml: &str) -> Vec<String> {
        match self.parse_env(yaml, &[]) {
            Err(ConfigError::Invalid { path, problems }) => {
                assert_eq!(path, self.file());
                let root = self.root.display().to_string();
                problems.iter().map(|p| p.replace(&root, "{dir}")).collect()
            }
            other => panic!("expected problems, got {other:?}"),
        }
    }
}

/// A valid config with extra lines in `api` (indented 2) and in the first folder (indented 4).
fn yaml(api: &str, folder: &str) -> String {
    format!(
            "api:\n  org_id: ORG\n{api}folders:\n  - path: {{dir}}/in\n    task: {{run_id: RUN, task_id: TASK, capture_id: CAP}}\n{folder}"
        )
}

fn minimal() -> String {
    yaml("", "")
}
