//! How a service reports on itself: the log format ([`LogFormat`]) and where spans go
//! ([`TraceExport`], from OpenTelemetry's standard variables). [`crate::telemetry`] acts on
//! them.

use std::str::FromStr;

use url::Url;

use super::{ConfigError, Env};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err("expected json or pretty".into()),
        }
    }
}

/// Span export, from OpenTelemetry's standard variables: OTLP over HTTP (protobuf) when
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set, none otherwise
/// or with `OTEL_TRACES_EXPORTER=none`. The trace context is propagated either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceExport {
    Off,
    /// The full URL spans are POSTed to (`…/v1/traces`).
    Otlp {
        traces_url: Url,
    },
}

impl TraceExport {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        match env.get("OTEL_TRACES_EXPORTER") {
            None | Some("otlp") => {}
            Some("none") => return Ok(Self::Off),
            Some(other) => {
                return Err(ConfigError::new(
                    "OTEL_TRACES_EXPORTER",
                    format!("{other:?}: expected otlp or none"),
                ));
            }
        }
        for key in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = env.get(key).filter(|p| *p != "http/protobuf") {
                return Err(ConfigError::new(
                    key,
                    format!("{protocol:?}: only http/protobuf is supported (port 4318)"),
                ));
            }
        }
        let parse = |key: &'static str, raw: &str| {
            Url::parse(raw)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https"))
                .ok_or_else(|| ConfigError::new(key, format!("{raw:?}: expected an http(s) URL")))
        };
        // As the specification says: the signal-specific URL is used as it is, the general
        // one gets the signal's path appended.
        if let Some(raw) = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            let traces_url = parse("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raw)?;
            return Ok(Self::Otlp { traces_url });
        }
        if let Some(raw) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            let base = parse("OTEL_EXPORTER_OTLP_ENDPOINT", raw)?;
            let traces_url = parse(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                &format!("{}/v1/traces", base.as_str().trim_end_matches('/')),
            )?;
            return Ok(Self::Otlp { traces_url });
        }
        Ok(Self::Off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CommonConfig, tests::base};

    #[test]
    fn traces_are_exported_only_where_the_standard_variables_say() {
        assert_eq!(
            CommonConfig::from_env(&base()).unwrap().traces,
            TraceExport::Off
        );
        let traces_url = |env: &Env| match CommonConfig::from_env(env).unwrap().traces {
            TraceExport::Otlp { traces_url } => traces_url.to_string(),
            TraceExport::Off => "off".into(),
        };
        let mut env = base();
        env.set("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/");
        assert_eq!(traces_url(&env), "http://collector:4318/v1/traces");
        env.set(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://otel.example/custom",
        );
        assert_eq!(traces_url(&env), "https://otel.example/custom");
        env.set("OTEL_TRACES_EXPORTER", "none");
        assert_eq!(traces_url(&env), "off");
        for (key, bad) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ] {
            let mut env = base();
            env.set("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
                .set(key, bad);
            assert_eq!(CommonConfig::from_env(&env).unwrap_err().variable, key);
        }
    }
}
