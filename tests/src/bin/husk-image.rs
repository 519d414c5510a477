//! `husk-image`: writes the tests' busybox OCI image as an image layout tar
//! archive, for `ctr image import`. Prints the manifest digest on stdout.
//!
//! ```text
//! husk-image [--busybox PATH] [--pause] [--name REF] OUT.tar
//! ```
//!
//! `--busybox` defaults to the static busybox the test host uses (`$HUSK_BUSYBOX`,
//! `/bin/busybox`, `/usr/bin/busybox`); `--name` to `husk.test/busybox:latest`.
//! `--pause` writes CRI's pause image instead (default name `husk.test/pause:latest`):
//! the same layer, a command that waits until SIGTERM.
//! See [`husk_tests::containerd::image`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use husk_tests::containerd::image::{OciImage, DEFAULT_IMAGE, PAUSE_IMAGE};

const USAGE: &str = "usage: husk-image [--busybox PATH] [--pause] [--name REF] OUT.tar";

struct Args {
    busybox: Option<PathBuf>,
    pause: bool,
    name: String,
    out: PathBuf,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let mut busybox = None;
    let mut pause = false;
    let mut name = None;
    let mut out = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--busybox" => busybox = Some(args.next().context("--busybox needs a path")?.into()),
            "--pause" => pause = true,
            "--name" => name = Some(args.next().context("--name needs a reference")?),
            "-h" | "--help" => bail!("{USAGE}"),
            a if a.starts_with('-') => bail!("unknown option {a}\n{USAGE}"),
            a if out.is_none() => out = Some(PathBuf::from(a)),
            a => bail!("unexpected argument {a}\n{USAGE}"),
        }
    }
    let out = out.context(USAGE)?;
    let default = if pause { PAUSE_IMAGE } else { DEFAULT_IMAGE };
    let name = name.unwrap_or_else(|| default.to_string());
    Ok(Args {
        busybox,
        pause,
        name,
        out,
    })
}

fn run() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let busybox = match args.busybox {
        Some(b) => b,
        None => husk_tests::testhost::find_static_busybox().map_err(anyhow::Error::msg)?,
    };
    let image = if args.pause {
        OciImage::pause(&args.name, &busybox)?
    } else {
        OciImage::busybox(&args.name, &busybox)?
    };
    image
        .write_layout_file(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", image.manifest.digest);
    eprintln!(
        "husk-image: {} ({}, busybox {}) -> {}",
        args.name,
        image.manifest.digest,
        busybox.display(),
        args.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-image: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
