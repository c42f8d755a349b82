//! The `ferromq` binary: see `ferromq --help`.

fn main() {
    std::process::exit(ferromq::cli::main());
}
