//! `enrich`: merges one field of a record fetched over HTTP into each input.
//!
//! The input is a JSON object with an `id`. The plugin fetches
//! `<url>/<id>` (config `url`, e.g. `https://records.example.com/v1/people`),
//! expects a JSON object back, and outputs the input with that object's
//! `<field>` (config `field`, default `name`) merged in. A record without the
//! field leaves the input as it is; a 404 is an `invalid-input` error.
//!
//! It needs an outbound grant for the service (its manifest, `enrich.toml`):
//!
//! ```toml
//! name = "enrich"
//! version = "1.0.0"
//!
//! [grants]
//! outbound = ["https://records.example.com"]
//!
//! [config]
//! url = "https://records.example.com/v1/people"
//! field = "country"
//! ```

use kiln_plugin::{Error, Output, Plugin, http};
use serde_json::{Map, Value};

struct Enrich;

impl Plugin for Enrich {
    fn process(input: String) -> Result<Output, Error> {
        let mut record: Map<String, Value> = serde_json::from_str(&input)
            .map_err(|e| Error::invalid_input(format!("not a JSON object: {e}")))?;
        let id = match record.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(Error::invalid_input("no string or number `id`")),
        };
        let base =
            kiln_plugin::config("url").ok_or_else(|| Error::internal("config `url` is not set"))?;
        let field = kiln_plugin::config("field").unwrap_or_else(|| "name".to_owned());
        let url = format!("{}/{}", base.trim_end_matches('/'), id);
        let response = http::send(&http::Request::get(&url).header("accept", "application/json"))?;
        match response.status {
            200 => {}
            404 => return Err(Error::invalid_input(format!("no record {id}"))),
            other => return Err(Error::internal(format!("{url}: status {other}"))),
        }
        let fetched: Map<String, Value> = serde_json::from_slice(&response.body)
            .map_err(|e| Error::internal(format!("{url}: not a JSON object: {e}")))?;
        let merged = match fetched.get(&field) {
            Some(value) => {
                record.insert(field.clone(), value.clone());
                true
            }
            None => false,
        };
        let text = Value::Object(record).to_string();
        Ok(Output::new(text).with_metadata("merged", merged))
    }
}

kiln_plugin::export!(Enrich);
