//! Fuzzing segments as text, one step a line, so a disagreement the fuzzer
//! found is replayed by the packet tests ever after:
//!
//! ```text
//! # comment
//! region 3 down
//! select 1 1,2,none 12345
//! frame r1 02bb00000001...
//! ```

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use redirector_common::{RegionState, NO_REGION};

use super::{hex, SelectionSpec, Step, INTERFACES, SERVICES};

pub fn save(path: &Path, header: &str, steps: &[Step]) -> Result<()> {
    let mut text: String = header.lines().map(|l| format!("# {l}\n")).collect();
    for step in steps {
        text.push_str(&line(step));
        text.push('\n');
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn load(path: &Path) -> Result<Vec<Step>> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(n, l)| parse(l).with_context(|| format!("{}:{}", path.display(), n + 1)))
        .collect()
}

/// The fixtures in `dir` (none if it does not exist), in name order.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
    files.sort();
    Ok(files)
}

fn line(step: &Step) -> String {
    match step {
        Step::Frame { ingress, bytes } => format!("frame {ingress} {}", hex(bytes)),
        Step::Region { id, state } => format!("region {id} {}", state_name(*state)),
        Step::Select { service, spec } => {
            let regions: Vec<String> = spec
                .regions
                .iter()
                .map(|r| if *r == NO_REGION { "none".into() } else { r.to_string() })
                .collect();
            format!("select {service} {} {}", regions.join(","), spec.seed)
        }
    }
}

fn parse(line: &str) -> Result<Step> {
    let words: Vec<&str> = line.split_whitespace().collect();
    Ok(match words[..] {
        ["frame", ingress, bytes] => Step::Frame {
            ingress: INTERFACES
                .iter()
                .find(|i| **i == ingress)
                .with_context(|| format!("no interface {ingress}"))?,
            bytes: unhex(bytes)?,
        },
        ["region", id, state] => Step::Region {
            id: id.parse().context("region id")?,
            state: match state {
                "down" => RegionState::Down,
                "up" => RegionState::Up,
                "draining" => RegionState::Draining,
                other => bail!("no region state {other}"),
            },
        },
        ["select", service, regions, seed] => {
            let service: usize = service.parse().context("service index")?;
            if service >= SERVICES.len() {
                bail!("no service {service}");
            }
            let regions = regions
                .split(',')
                .map(|r| if r == "none" { Ok(NO_REGION) } else { r.parse().context("region id") })
                .collect::<Result<Vec<u8>>>()?;
            if regions.is_empty() {
                bail!("a selection needs a region");
            }
            Step::Select { service, spec: SelectionSpec { regions, seed: seed.parse().context("seed")? } }
        }
        _ => bail!("not a step: {line}"),
    })
}

fn state_name(state: RegionState) -> &'static str {
    match state {
        RegionState::Down => "down",
        RegionState::Up => "up",
        RegionState::Draining => "draining",
    }
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).context("hex bytes"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_survive_a_round_trip_through_text() {
        let steps = vec![
            Step::Region { id: 3, state: RegionState::Draining },
            Step::Select { service: 2, spec: SelectionSpec { regions: vec![1, NO_REGION, 5], seed: 77 } },
            Step::Frame { ingress: "r4", bytes: vec![0, 1, 0xfe, 0xff] },
        ];
        let parsed: Vec<Step> = steps.iter().map(|s| parse(&line(s)).unwrap()).collect();
        assert_eq!(parsed, steps);
        assert!(parse("frame r9 00").is_err());
        assert!(parse("select 9 1 1").is_err());
        assert!(parse("frame cli 0").is_err());
    }
}
