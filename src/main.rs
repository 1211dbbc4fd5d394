//! The `haul` binary: everything lives in the library; exit codes are decided in `cli::main`.

fn main() {
    std::process::exit(haul::cli::main());
}
