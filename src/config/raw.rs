//! The config file's YAML values, taken apart key by key: receives each mapping and a parser
//! per key, emits the parsed values, and collects every rejected or unknown key, with its key
//! path, into the one list of problems a load reports. The value parsers shared by the sections
//! live here too.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::secret::{CLIENT_SECRET, TOKEN};

/// Every problem found so far. Shared by reference between nested sections so
/// that one walk collects all of them.
#[derive(Default)]
pub(super) struct Problems(pub(super) RefCell<Vec<String>>);

impl Problems {
    pub(super) fn add(&self, problem: String) {
        self.0.borrow_mut().push(problem);
    }

    /// Parses `value`, reporting a rejection as `path value: why`.
    pub(super) fn check<T>(
        &self,
        path: &str,
        value: &Value,
        parse: impl FnOnce(&Value) -> Result<T, Bad>,
    ) -> Option<T> {
        let bad = match parse(value) {
            Ok(parsed) => return Some(parsed),
            Err(bad) => bad,
        };
        let shown = match (&bad, scalar(value)) {
            (Bad::Secret(_), _) | (_, None) => path.to_string(),
            (Bad::Url(_), Some(_)) => {
                let text = value.as_str().unwrap_or_default();
                format!("{path} {:?}", crate::text::without_userinfo(text))
            }
            (_, Some(text)) => format!("{path} {text}"),
        };
        self.add(match bad {
            Bad::Type(expected) => format!("{shown}: expected {expected}, found {}", kind(value)),
            Bad::Invalid(why) | Bad::Url(why) | Bad::Secret(why) => format!("{shown}: {why}"),
        });
        None
    }
}

/// Why a value was rejected.
pub(super) enum Bad {
    /// The YAML type is wrong; names what was expected, e.g. "a duration string".
    Type(&'static str),
    /// The type is right but the value is not acceptable.
    Invalid(String),
    /// A URL that is not acceptable: shown without what may be a user name and password.
    Url(String),
    /// The value holds a secret where none belongs: not shown at all.
    Secret(String),
}

pub(super) fn invalid<T>(why: impl Into<String>) -> Result<T, Bad> {
    Err(Bad::Invalid(why.into()))
}

/// One YAML mapping being taken apart. Keys are removed as they are read, so
/// whatever is left at `finish` is unknown, and the keys asked for are the
/// ones the error lists as expected.
pub(super) struct Section<'p> {
    pub(super) path: String,
    pub(super) map: Mapping,
    pub(super) known: Vec<&'static str>,
    pub(super) problems: &'p Problems,
}

impl<'p> Section<'p> {
    pub(super) fn new(path: String, map: Mapping, problems: &'p Problems) -> Self {
        Section {
            path,
            map,
            known: Vec::new(),
            problems,
        }
    }

    pub(super) fn child(&self, key: &str, map: Mapping) -> Section<'p> {
        Section::new(self.at(key), map, self.problems)
    }

    pub(super) fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// `Ok(None)` when absent; an explicit null (`key:` with nothing after it)
    /// counts as absent. `Err(())` when present but rejected (already reported).
    pub(super) fn get<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&Value) -> Result<T, Bad>,
    ) -> Result<Option<T>, ()> {
        self.known.push(key);
        match self.map.shift_remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => self
                .problems
                .check(&self.at(key), &value, parse)
                .map(Some)
                .ok_or(()),
        }
    }

    pub(super) fn opt<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&Value) -> Result<T, Bad>,
    ) -> Option<T> {
        self.get(key, parse).ok().flatten()
    }

    pub(super) fn req<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&Value) -> Result<T, Bad>,
    ) -> Option<T> {
        let got = self.get(key, parse);
        if let Ok(None) = got {
            self.problems.add(format!("{}: required", self.at(key)));
        }
        got.ok().flatten()
    }

    pub(super) fn finish(self) {
        for key in self.map.keys() {
            let name = match key {
                Value::String(name) => name.clone(),
                other => scalar(other).unwrap_or_else(|| format!("<{}>", kind(other))),
            };
            // The value is never shown: a misplaced secret must not be echoed.
            let why = if let Some(source) = [&CLIENT_SECRET, &TOKEN]
                .into_iter()
                .find(|source| name.contains(source.word))
            {
                format!(
                    "the {} is never read from the config file; it comes from {}",
                    source.what,
                    source.places()
                )
            } else {
                format!("expected one of {}", self.known.join(", "))
            };
            self.problems
                .add(format!("{}: unknown key ({why})", self.at(&name)));
        }
    }
}

/// A scalar as it appears in a problem; strings are quoted and escaped so
/// that every problem stays on one line.
pub(super) fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(format!("{s:?}")),
        _ => None,
    }
}

pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

pub(super) fn mapping(value: &Value) -> Result<Mapping, Bad> {
    match value {
        Value::Mapping(map) => Ok(map.clone()),
        _ => Err(Bad::Type("a mapping")),
    }
}

pub(super) fn list(value: &Value) -> Result<Vec<Value>, Bad> {
    match value {
        Value::Sequence(items) => Ok(items.clone()),
        _ => Err(Bad::Type("a list")),
    }
}

pub(super) fn boolean(value: &Value) -> Result<bool, Bad> {
    match value {
        Value::Bool(b) => Ok(*b),
        _ => Err(Bad::Type("true or false")),
    }
}

/// Ids go into URL paths, hence the narrow alphabet.
pub(super) fn id(value: &Value) -> Result<String, Bad> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    match value {
        Value::String(s) if s.is_empty() => invalid("must not be empty"),
        Value::String(s) if !s.bytes().all(allowed) => {
            invalid("may only contain ASCII letters, digits, - and _")
        }
        Value::String(s) => Ok(s.clone()),
        // YAML would already have mangled it (0123 is 123, 12e4 is a float).
        Value::Number(_) => invalid("expected a string, found a number (put the id in quotes)"),
        _ => Err(Bad::Type("a string")),
    }
}

pub(super) fn duration(value: &Value) -> Result<Duration, Bad> {
    let hint = "not a duration (use e.g. 500ms, 2s, 5m)";
    match value {
        Value::String(s) => humantime::parse_duration(s).or_else(|_| invalid(hint)),
        Value::Number(_) => invalid(hint),
        _ => Err(Bad::Type("a duration string")),
    }
}

pub(super) fn positive_duration(value: &Value) -> Result<Duration, Bad> {
    match duration(value)? {
        zero if zero.is_zero() => invalid("must be greater than 0"),
        positive => Ok(positive),
    }
}

/// `50%` (or a bare number of percent).
pub(super) fn percentage(value: &Value) -> Result<u8, Bad> {
    let hint = "expected a percentage between 0% and 100%, e.g. 50%";
    let number = match value {
        Value::String(s) => s
            .trim()
            .strip_suffix('%')
            .unwrap_or(s)
            .trim()
            .parse::<u64>()
            .ok(),
        Value::Number(n) => n.as_u64(),
        _ => return Err(Bad::Type("a percentage such as 50%")),
    };
    match number {
        Some(percent @ 0..=100) => Ok(percent as u8),
        _ => invalid(hint),
    }
}

pub(super) fn path_in(base: &Path) -> impl Fn(&Value) -> Result<PathBuf, Bad> + '_ {
    move |value| match value {
        Value::String(s) if s.is_empty() => invalid("must not be empty"),
        Value::String(s) => Ok(base.join(s)),
        _ => Err(Bad::Type("a path string")),
    }
}

/// `path` with the symbolic links of the part that exists resolved, so that it compares with
/// the canonical folder paths; a directory not made yet is created when first needed.
pub(super) fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut missing = Vec::new();
    let mut existing = absolute.as_path();
    loop {
        if let Ok(real) = fs::canonicalize(existing) {
            return missing
                .iter()
                .rev()
                .fold(real, |path, part| path.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// The choice `value` names, from `choices`; the error lists them ("expected name or id").
pub(super) fn one_of<T: Copy>(value: &Value, choices: &[(&str, T)]) -> Result<T, Bad> {
    let chosen = value
        .as_str()
        .and_then(|text| choices.iter().find(|(name, _)| *name == text));
    if let Some((_, choice)) = chosen {
        return Ok(*choice);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let listed = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    };
    invalid(format!("expected {listed}"))
}
