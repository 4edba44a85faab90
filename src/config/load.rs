//! Placeholder: replaced by the loader.
use super::Config;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

pub fn load_str(_src: &str, _file: &str) -> Result<Config, ConfigErrors> {
    unimplemented!()
}

pub fn load_file(_path: &Path) -> Result<Config, ConfigErrors> {
    unimplemented!()
}
