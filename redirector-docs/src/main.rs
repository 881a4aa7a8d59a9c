//! `redirector-docs DIR`: the man pages (section 8, one per command and
//! subcommand, as git has them) and the bash and zsh completions of
//! redirectord, redirectorctl and redirector-agent, written under DIR from
//! the same clap definitions the binaries parse with, so they cannot
//! drift. `cargo xtask package` runs it and packs what it writes.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// System administration commands (man-pages(7)).
const SECTION: &str = "8";

fn main() -> Result<()> {
    let out = PathBuf::from(std::env::args_os().nth(1).context("usage: redirector-docs DIR")?);
    let commands = [
        redirector::cli::Cli::command(),
        redirectorctl::cli::Cli::command(),
        redirector_agent::cli::Cli::command(),
    ];
    for command in commands {
        let name = command.get_name().to_string();
        write_man_pages(&command, &out.join("man"))?;
        write_completion(command.clone(), Shell::Bash, &out.join("bash").join(&name))?;
        write_completion(command, Shell::Zsh, &out.join("zsh").join(format!("_{name}")))?;
    }
    Ok(())
}

/// `command`'s page and one per subcommand (`redirectorctl-flows.8`), each
/// under the name an operator types after `man`.
fn write_man_pages(command: &clap::Command, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let mut command = command.clone().disable_help_subcommand(true);
    command.build();
    write_man_page(&command, dir)?;
    for sub in command.get_subcommands() {
        let page = sub.clone().name(format!("{}-{}", command.get_name(), sub.get_name()));
        write_man_page(&page, dir)?;
    }
    Ok(())
}

fn write_man_page(command: &clap::Command, dir: &Path) -> Result<()> {
    let path = dir.join(format!("{}.{SECTION}", command.get_name()));
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).section(SECTION).render(&mut page)?;
    fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
}

fn write_completion(mut command: clap::Command, shell: Shell, path: &Path) -> Result<()> {
    fs::create_dir_all(path.parent().expect("a file under a directory"))?;
    let name = command.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    fs::write(path, script).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_gets_a_page_and_completions_name_them() {
        let dir = std::env::temp_dir().join(format!("redirector-docs-{}", std::process::id()));
        let ctl = redirectorctl::cli::Cli::command();
        write_man_pages(&ctl, &dir.join("man")).unwrap();
        write_completion(ctl.clone(), Shell::Bash, &dir.join("bash/redirectorctl")).unwrap();
        let bash = fs::read_to_string(dir.join("bash/redirectorctl")).unwrap();
        for sub in ctl.get_subcommands() {
            let page = dir.join(format!("man/redirectorctl-{}.8", sub.get_name()));
            let text = fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
            // roff escapes every dash of the page's name.
            let title = format!("redirectorctl-{}", sub.get_name()).replace('-', "\\-");
            assert!(text.contains(&format!("{title} \\- ")), "{text}");
            assert!(bash.contains(&format!("redirectorctl,{}", sub.get_name())), "bash misses {}", sub.get_name());
        }
        assert!(!dir.join("man/redirectorctl-help.8").exists(), "a page for clap's help subcommand");
        fs::remove_dir_all(&dir).unwrap();
    }
}
