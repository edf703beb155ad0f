//! Istio's validation rules: every object is checked before use; a bad one is reported (object,
//! field path, reason) and skipped while everything else keeps serving.
