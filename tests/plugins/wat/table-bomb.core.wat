;; The core module of a plugin that grows a table without end. Rust, JS and
;; Python guests cannot emit `table.grow`, so this one is written by hand;
;; the tests wrap it into a component of the hookhost:plugin world with
;; wit-component. `handle` takes its arguments through one pointer (more
;; than 16 flat values) and returns a pointer to its result.
(module
  (memory (export "memory") 2)
  (table $t 1 funcref)
  (global $heap (mut i32) (i32.const 4096))

  ;; A bump allocator: enough for the host to lower one delivery's arguments.
  (func (export "cabi_realloc")
    (param $old i32) (param $old_size i32) (param $align i32) (param $size i32)
    (result i32)
    (local $p i32)
    (local.set $p
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (block $enough
      (loop $grow
        (br_if $enough
          (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
          (then unreachable))
        (br $grow)))
    (local.get $p))

  ;; An empty list (all event kinds): pointer 0, length 0 at offset 16.
  (func (export "hookhost:plugin/handler@0.1.0#subscriptions") (result i32)
    (i32.const 16))

  ;; Grow the table by 10,000 null entries until refused, then trap.
  (func (export "hookhost:plugin/handler@0.1.0#handle") (param i32) (result i32)
    (loop $more
      (br_if $more
        (i32.ne
          (table.grow $t (ref.null func) (i32.const 10000))
          (i32.const -1))))
    unreachable)
)
