// Link with -z nodelete so the shared object can never be unmapped while a refresher thread
// (which never touches Lua) is still running its code after lua_close.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
