// Shared by the build scripts of every package that links libtorch (included with
// `include!`): bake an rpath to the libtorch that torch-sys linked against, so binaries
// run without LD_LIBRARY_PATH, and keep libtorch_cuda linked even though no symbol of it
// is referenced directly (otherwise `--as-needed` drops it and CUDA is never available).
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    let dir = std::path::Path::new(&lib_dir);
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed,-ltorch_cuda,--pop-state");
    }
}
