// The demo page is embedded with include_dir!, which does not notice new
// files; rebuild whenever anything under web/ changes.
fn main() {
    println!("cargo:rerun-if-changed=web");
}
