//! `--print-config`: the effective configuration as a TOML file that reads back unchanged,
//! written by hand because the secret must show only as redacted and unset keys as comments.

use serde_json::Value as Json;

use super::{Config, keys};

/// The effective configuration as TOML for `--print-config`: every key, unset ones as
/// comments, the Heap app id only as `<redacted>`/`<unset>`. It reads back unchanged.
pub fn render(config: &Config) -> Result<String, String> {
    let Json::Object(values) = serde_json::to_value(config).map_err(|e| e.to_string())? else {
        return Err("the configuration is not a table".into());
    };
    let mut out = String::from(
        "# The effective configuration: flags, then environment variables, then --config FILE,\n# then defaults.\n",
    );
    let app_id = if config.heap_app_id.is_some() || config.heap_app_id_file.is_some() {
        "<redacted>"
    } else {
        "<unset>"
    };
    out.push_str(&format!("# heap_app_id = {app_id}\n"));
    for key in keys().iter().filter(|k| !values.contains_key(**k)) {
        out.push_str(&format!("# {key} is unset\n"));
    }
    let mut tables = String::new();
    for (key, value) in &values {
        match value {
            Json::Object(table) => {
                tables.push_str(&format!("\n[{key}]\n"));
                for (k, v) in table {
                    tables.push_str(&format!("{} = {}\n", toml_string(k), toml_value(v)?));
                }
            }
            other => out.push_str(&format!("{key} = {}\n", toml_value(other)?)),
        }
    }
    Ok(out + &tables)
}

fn toml_value(value: &Json) -> Result<String, String> {
    match value {
        Json::String(s) => Ok(toml_string(s)),
        Json::Number(_) | Json::Bool(_) => Ok(value.to_string()),
        Json::Array(items) => Ok(format!(
            "[{}]",
            items
                .iter()
                .map(toml_value)
                .collect::<Result<Vec<_>, _>>()?
                .join(", ")
        )),
        Json::Null | Json::Object(_) => Err(format!("`{value}` has no TOML form here")),
    }
}

/// A TOML basic string: JSON's escapes are TOML's, except that TOML also escapes DEL.
fn toml_string(s: &str) -> String {
    Json::String(s.to_string())
        .to_string()
        .replace('\u{7f}', "\\u007F")
}
