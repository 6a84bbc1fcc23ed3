;; A valid component that exports another world's function instead of
;; hookhost:plugin/handler: the host must refuse to load it.
(component
  (core module $m
    (func (export "run") (result i32) i32.const 42))
  (core instance $i (instantiate $m))
  (func $run (result u32) (canon lift (core func $i "run")))
  (export "run" (func $run)))
