include!("../build/libtorch_link.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build/libtorch_link.rs");
    link_libtorch();
}
