// The JSON view of a TypeScript type: what a dashboard file can hold. @grafana/schema types
// some fields with string enums (`FieldColorModeId`, `MappingType`, `ThresholdsMode`), and
// TypeScript assigns no string literal to a string enum, even one of its own values; a JSON
// file can only hold the value itself. `${E}` turns a string enum into the union of its values
// ("thresholds" | "palette-classic" | ...): still checked, but as JSON spells it. Numbers, and
// so numeric enums, are left alone (a number literal of the enum's values is accepted).
export type Json<T> = T extends string
  ? `${T}`
  : T extends ReadonlyArray<infer U>
    ? Array<Json<U>>
    : T extends object
      ? { [K in keyof T]: Json<T[K]> }
      : T;
