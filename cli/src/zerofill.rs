//! Decoding JSON written by Go's `encoding/json` from CRI structs into `k8s_cri` types.
//!
//! Go leaves out every zero field (`omitempty`), while k8s_cri's serde derives require all
//! fields except `Option`s. This deserializer reads a missing or `null` field as the zero value
//! of whatever type asks for it (`""`, `0`, `false`, `[]`, `{}`, `None`, a struct of zeros), which
//! is what protobuf means by an absent field. Enums and 64-bit integers are numbers in Go's
//! JSON, as serde expects.

use serde::{
    de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor},
    forward_to_deserialize_any, Deserializer,
};
use serde_json::{Map, Value};

/// Decodes `value` into `T`, treating absent fields as protobuf zero values.
pub fn from_go_json<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    T::deserialize(Filled(value))
}

struct Filled(Value);

macro_rules! scalar {
    ($($method:ident => $zero:ident($($val:expr)?)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            match self.0 {
                Value::Null => visitor.$zero($($val)?),
                other => other.$method(visitor),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for Filled {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(Seq(items.into_iter())),
            Value::Object(map) => visitor.visit_map(Entries { iter: map.into_iter(), pending: None }),
            other => other.deserialize_any(visitor),
        }
    }

    scalar! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i8(0), deserialize_i16 => visit_i16(0),
        deserialize_i32 => visit_i32(0), deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u8(0), deserialize_u16 => visit_u16(0),
        deserialize_u32 => visit_u32(0), deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f32(0.0), deserialize_f64 => visit_f64(0.0),
        deserialize_str => visit_str(""), deserialize_string => visit_str(""),
        deserialize_bytes => visit_bytes(&[]), deserialize_byte_buf => visit_bytes(&[]),
        deserialize_unit => visit_unit(),
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Filled(other)),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_seq(Seq(Vec::new().into_iter())),
            Value::Array(items) => visitor.visit_seq(Seq(items.into_iter())),
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_map(Entries { iter: Map::new().into_iter(), pending: None }),
            Value::Object(map) => visitor.visit_map(Entries { iter: map.into_iter(), pending: None }),
            other => other.deserialize_map(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let map = match self.0 {
            Value::Null => Map::new(),
            Value::Object(map) => map,
            other => return Err(de::Error::invalid_type(unexpected(&other), &"a JSON object")),
        };
        // Offer every declared field, present or not; fields the type does not know are dropped,
        // as Go's decoder and protobuf both do.
        visitor.visit_map(Fields { fields: fields.iter(), map, pending: None })
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    forward_to_deserialize_any! { char tuple tuple_struct identifier ignored_any unit_struct }
}

fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Number(_) => de::Unexpected::Other("number"),
        _ => de::Unexpected::Other("value"),
    }
}

struct Seq(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for Seq {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Self::Error> {
        self.0.next().map(|v| seed.deserialize(Filled(v))).transpose()
    }
}

/// A JSON object as a map (`HashMap` fields).
struct Entries {
    iter: serde_json::map::IntoIter,
    pending: Option<Value>,
}

impl<'de> MapAccess<'de> for Entries {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        let Some((key, value)) = self.iter.next() else { return Ok(None) };
        self.pending = Some(value);
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Self::Error> {
        seed.deserialize(Filled(self.pending.take().unwrap_or(Value::Null)))
    }
}

/// A JSON object as a struct: every declared field, `null` where absent.
struct Fields {
    fields: std::slice::Iter<'static, &'static str>,
    map: Map<String, Value>,
    pending: Option<Value>,
}

impl<'de> MapAccess<'de> for Fields {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        let Some(name) = self.fields.next() else { return Ok(None) };
        self.pending = Some(self.map.remove(*name).unwrap_or(Value::Null));
        seed.deserialize((*name).into_deserializer()).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Self::Error> {
        seed.deserialize(Filled(self.pending.take().unwrap_or(Value::Null)))
    }
}

#[cfg(test)]
mod tests {
    use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};
    use serde_json::json;

    use super::*;

    #[test]
    fn go_style_container_config_decodes() {
        // The shape containerd's verbose ContainerStatus info carries: zero fields left out.
        let go = json!({
            "metadata": {"name": "app"},
            "image": {"image": "localhost/busybox:latest"},
            "args": ["sleep", "1000"],
            "envs": [{"key": "A", "value": "1"}],
            "labels": {"io.kubernetes.container.name": "app"},
            "linux": {"resources": {"memory_limit_in_bytes": 104857600, "oom_score_adj": 1000},
                      "security_context": {"namespace_options": {"pid": 1}}},
            "unknown_future_field": true
        });
        let cfg: ContainerConfig = from_go_json(go).unwrap();
        let meta = cfg.metadata.as_ref().unwrap();
        assert_eq!((meta.name.as_str(), meta.attempt), ("app", 0));
        assert_eq!(cfg.args, ["sleep", "1000"]);
        assert!(cfg.command.is_empty() && cfg.working_dir.is_empty() && !cfg.tty);
        assert_eq!(cfg.envs[0].value, "1");
        let linux = cfg.linux.as_ref().unwrap();
        assert_eq!(linux.resources.as_ref().unwrap().memory_limit_in_bytes, 104857600);
        assert_eq!(linux.security_context.as_ref().unwrap().namespace_options.as_ref().unwrap().pid, 1);
        assert!(cfg.windows.is_none());
    }

    #[test]
    fn nulls_and_full_round_trip() {
        let cfg: PodSandboxConfig =
            from_go_json(json!({"hostname": null, "port_mappings": null, "labels": null})).unwrap();
        assert_eq!(cfg, PodSandboxConfig::default());
        // What serde itself writes (every field present) decodes to the same value.
        let full = PodSandboxConfig { hostname: "h".into(), ..Default::default() };
        let back: PodSandboxConfig = from_go_json(serde_json::to_value(&full).unwrap()).unwrap();
        assert_eq!(back, full);
    }

    #[test]
    fn wrong_types_are_errors() {
        assert!(from_go_json::<ContainerConfig>(json!({"args": "not a list"})).is_err());
        assert!(from_go_json::<ContainerConfig>(json!("string")).is_err());
        assert!(from_go_json::<ContainerConfig>(json!({"tty": 3})).is_err());
    }
}
