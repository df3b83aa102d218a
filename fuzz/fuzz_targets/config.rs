//! The config and policy loaders: any text is accepted or refused with an error, never a
//! panic; an accepted config printed back as TOML loads again to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldgate::config::Config;
use shieldgate::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, "fuzz.toml") {
        let printed = config.to_toml();
        let again = Config::parse(&printed, "printed.toml")
            .unwrap_or_else(|e| panic!("printed config does not load: {e}\n{printed}"));
        assert_eq!(again, config);
    }
    let _ = Policy::from_toml(text, "policy.toml");
});
