//! List columns (`List<Utf8>`, `List<Float64>`, or the same lists written as JSON text),
//! as the pair table carries its steps and advantages.
