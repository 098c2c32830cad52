"""Sandboxed Lua conditions for flow-control decisions.

A condition is one Lua *expression* (``count > 5``, ``(a and b) or not c``, ``task.params.n >= 3``) or a
Python callable. Asimov evaluated conditions by pasting cache values into the text and running it in one
shared, unsandboxed ``LuaRuntime`` (``os.execute`` ran, ``python.eval`` worked, globals leaked between agents).
This module keeps the syntax and drops the hazards.

The sandbox's rules
-------------------
* **Lua 5.4** (``lupa.lua54``, pinned rather than "newest": LuaJIT cannot limit memory on 64-bit, and 5.4
  gives ``_ENV``, integers and the exact error messages below).
* **One private runtime per thread**, created with ``register_eval=False, register_builtins=False``, an
  ``attribute_filter`` that refuses every Python attribute, and its whole ``_G`` emptied after setup. The
  setup code keeps private references to ``load``, ``pcall``, ``debug.sethook``, ``collectgarbage``; no
  condition can reach them.
* **A fresh environment per evaluation.** The source is compiled once (per runtime) as
  ``local _ENV = ... return (<source>)`` with ``load(..., "t")`` (text only, never bytecode), and each
  evaluation passes a brand-new table as ``_ENV``: the bound variables, plus read-only access to the
  whitelist below. A global that one evaluation writes (inside a function body) dies with it.
* **Whitelist**: ``assert error ipairs next pairs select tonumber tostring type``, ``math`` (without
  ``randomseed``: shared RNG state), ``table``, ``utf8``, and ``string`` reduced to ``byte char format len
  lower upper rep reverse sub`` plus a *plain-text* ``find``. Library tables are read-only views, and the
  string metatable's ``__index`` is the same reduced view, so ``("x"):dump`` is nil too.
  Not available: ``os io debug package require load loadstring dofile loadfile collectgarbage print warn
  coroutine pcall xpcall getmetatable setmetatable rawget rawset rawequal rawlen _G string.dump`` and Lua
  patterns (``find``/``match``/``gmatch``/``gsub``): a pattern match runs inside one C call that no
  instruction limit can interrupt (``("a"):rep(1e4):find((".-"):rep(12).."b")`` would run for hours).
  ``pcall`` and ``coroutine`` are out because they would let a condition swallow the instruction-limit
  error or run code in a coroutine the count hook does not watch.
* **What it sees**: the variables as globals (missing ones are nil) and ``task`` as a read-only view (a write
  raises "the task is read-only"; ``pairs``, ``ipairs`` and ``#`` work, ``next(task)`` sees nothing). When the
  source only reads ``task.X`` fields, only those fields are converted. ``identifiers`` lists the free names
  the engine should fetch with the decision's ``condition_variables`` in one batched cache read.
* **No Python bridge**: variables and the task arrive as Lua tables, strings, numbers and booleans — never
  Python proxies; values of other types are refused with a ``ConditionError``.
* **Limits** (``ConditionLimits``): an instruction count hook (default 1,000,000 VM instructions, a few ms),
  a memory ceiling (default 16 MiB that the condition may allocate beyond its bound inputs; after a failure
  the memory is collected at once), a source length limit, and no NUL bytes. C functions that run long without
  executing VM instructions are bounded by the memory limit (``string.rep``, ``table.concat``) or by a
  size check (plain ``find``); ``table.sort`` of a maximal table (~1M elements) takes ~0.1 s, the worst case.

Semantics that differ from Asimov
---------------------------------
* **Lua truthiness**: only ``nil`` and ``false`` are false; ``0`` and ``""`` are **true** (Asimov tested the
  result with Python truthiness).
* Variables are bound through the environment, not by substituting text, so ``count>5``, ``(count > 5)``,
  ``d['k']`` and ``task.objective`` all work. A referenced name that was not bound is ``nil``.
* Every error — syntax, runtime, limit — is a ``ConditionError`` naming the source (and the node and
  decision when the engine passes them), not a ``LuaError`` retried like any failure.

Threads: ``CompiledCondition`` objects may be shared; each thread evaluates in its own runtime (compiled
lazily per thread), so no lock is held across threads.
"""

from __future__ import annotations

import inspect
import re
import threading
import types
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeAlias

import lupa.lua54 as lupa

from flowmas.errors import ConditionError, ConfigurationError, FlowmasError

__all__ = [
    "STD_NAMES",
    "CompiledCondition",
    "Condition",
    "ConditionLimits",
    "compile_condition",
    "condition_error",
    "evaluate_any",
]

STD_NAMES = frozenset({
    "assert", "error", "ipairs", "next", "pairs", "select", "tonumber", "tostring", "type",
    "math", "string", "table", "utf8",
})
"""The globals a condition sees besides its variables (and ``task``)."""

LUA_KEYWORDS = frozenset({
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in", "local",
    "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
})

_MAX_DEPTH = 64
_SOURCE_IN_MESSAGE = 200
_COMPILED_PER_RUNTIME = 512
_GC_SLACK = 1 << 20


@dataclass(frozen=True)
class ConditionLimits:
    """What one evaluation may use. ``max_instructions`` counts Lua VM instructions (1M ≈ a few ms)."""

    max_instructions: int = 1_000_000
    max_memory_bytes: int = 16 * 1024 * 1024
    max_source_length: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_instructions", "max_memory_bytes", "max_source_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigurationError(f"ConditionLimits.{name} must be a positive integer, not {value!r}.")
        if self.max_instructions > 2**31 - 1:
            raise ConfigurationError("ConditionLimits.max_instructions must be below 2**31 (a Lua hook count).")


DEFAULT_LIMITS = ConditionLimits()


def condition_error(node: str | None, decision: int | str | None, source: str, reason: str) -> ConditionError:
    """Build the one ``ConditionError`` shape: the node, the decision, the source text and the reason.

    The instance carries ``node``, ``decision``, ``source`` and ``reason`` so the engine can re-raise an
    error from ``evaluate`` with its own node and decision: ``condition_error(node, i, e.source, e.reason)``.
    """
    shown = source if len(source) <= _SOURCE_IN_MESSAGE else source[:_SOURCE_IN_MESSAGE] + "…"
    where = ""
    if node is not None:
        where = f" of node {node!r}" + (f", decision {decision!r}" if decision is not None else "")
    elif decision is not None:
        where = f" of decision {decision!r}"
    error = ConditionError(f"Condition {shown!r}{where}: {reason}")
    error.node, error.decision, error.source, error.reason = node, decision, source, reason  # type: ignore[attr-defined]
    return error


# --- the Lua side: set up once per runtime ---------------------------------------------------------------

_SETUP = r"""
local load, pcall, error, type, next, tostring, select = load, pcall, error, type, next, tostring, select
local setmetatable, getmetatable, sethook, collect = setmetatable, getmetatable, debug.sethook, collectgarbage
local s_find, s_len, s_sub = string.find, string.len, string.sub

-- A read-only view; nothing hands out `t` itself (pairs returns a closure, not `next, t`).
local function readonly_view(t, name)
  local view = {}
  return setmetatable(view, {
    __index = t,
    __newindex = function() error(name .. " is read-only", 2) end,
    __len = function() return #t end,
    __pairs = function() return function(_, k) return next(t, k) end, view, nil end,
    __metatable = false,
  })
end

local MAGIC = "[%^%$%*%+%?%.%(%)%[%]%%%-]"
local function find(s, text, init, plain)
  if plain ~= true and type(text) == "string" and s_find(text, MAGIC) then
    error("string.find: Lua patterns are disabled in conditions (a pattern match cannot be interrupted);"
      .. " search plain text with s:find(text, 1, true)", 2)
  end
  if type(s) == "string" and type(text) == "string" and #s * #text > 268435456 then
    error("string.find: the text and the searched string are too long to search", 2)
  end
  return s_find(s, text, init, true)
end

local safe_string = {}
for _, k in ipairs({"byte", "char", "format", "len", "lower", "upper", "rep", "reverse", "sub"}) do
  safe_string[k] = string[k]
end
safe_string.find = find
local STRING = readonly_view(safe_string, "string")
local string_mt = getmetatable("")
string_mt.__index = STRING
string_mt.__metatable = false

local safe_math = {}
for k, v in pairs(math) do if k ~= "randomseed" then safe_math[k] = v end end

local BASE = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, select = select,
  tonumber = tonumber, tostring = tostring, type = type,
  math = readonly_view(safe_math, "math"), string = STRING,
  table = readonly_view(table, "table"), utf8 = readonly_view(utf8, "utf8"),
}
local ENV_MT = {__index = BASE, __metatable = false}
local NO_ENV = readonly_view({}, "_ENV")

local function readonly_task(root)
  local proxies = {}
  local function wrap(t)
    local p = proxies[t]
    if p then return p end
    p = {}
    setmetatable(p, {
      __index = function(_, k)
        local v = t[k]
        if type(v) == "table" then return wrap(v) end
        return v
      end,
      __newindex = function() error("the task is read-only", 2) end,
      __len = function() return #t end,
      __pairs = function()
        return function(_, k)
          local nk, nv = next(t, k)
          if type(nv) == "table" then nv = wrap(nv) end
          return nk, nv
        end, p, nil
      end,
      __metatable = false,
    })
    proxies[t] = p
    return p
  end
  return wrap(root)
end

local function compile(code)
  local fn, err = load(code, "=condition", "t", NO_ENV)
  if fn == nil then return false, err end
  return true, fn
end

local tripped, limit_now = false, 0
local function hook()
  tripped = true
  error("exceeded the instruction limit of " .. limit_now, 0)
end

local function run(fn, env, task, bind_task, limit)
  if env == nil then env = {} end
  setmetatable(env, ENV_MT)
  if bind_task then
    if task == nil then env.task = nil else env.task = readonly_task(task) end
  end
  tripped, limit_now = false, limit
  sethook(hook, "", limit)
  local ok, res = pcall(fn, env)
  sethook()
  if ok then return true, res ~= nil and res ~= false end
  if tripped then return false, "instructions", res end
  if type(res) ~= "string" then return false, "error", "error object is a " .. type(res) .. " value" end
  if res == "not enough memory" then return false, "memory", res end
  if #res > 1000 then res = s_sub(res, 1, 1000) .. "…" end
  return false, "error", res
end

-- A deep recursion leaves a grown stack that each full collection only halves: collect until it settles.
local function reset()
  sethook()
  for _ = 1, 12 do
    local before = collect("count")
    collect("collect")
    if collect("count") > before * 0.9 then break end
  end
end

local G = _G
for k in next, G do G[k] = nil end
return compile, run, reset
"""


def _refuse_attribute(obj: object, name: object, is_setting: bool) -> object:
    raise AttributeError("Python attributes are not reachable from a condition")


class _Runtime:
    """One thread's sandbox runtime and its LRU of compiled functions.

    The memory ceiling is set only around the protected ``run`` call and lifted (0 = none) otherwise:
    lupa's own C-API work outside a protected call (``table_from``, pushing a source string) would abort the
    whole process on a Lua memory error instead of raising. So the ceiling is "what the condition may
    allocate beyond its bound inputs"; inputs are Python data that already exist once in memory.
    """

    def __init__(self) -> None:
        self.lua = lupa.LuaRuntime(
            register_eval=False, register_builtins=False, attribute_filter=_refuse_attribute,
            max_memory=0, unpack_returned_tuples=False, overflow_handler=float,
        )
        self.compile_lua, self.run_lua, self.reset = self.lua.execute(_SETUP)
        self.functions: OrderedDict[str, Any] = OrderedDict()
        self.lua.gccollect()
        self.collected_at: int = self.lua.get_memory_used()

    def run(self, fn: Any, variables: Any, task: Any, bind_task: bool, limits: ConditionLimits) -> Any:
        lua = self.lua
        lua.set_max_memory(lua.get_memory_used() + limits.max_memory_bytes)
        try:
            return self.run_lua(fn, variables, task, bind_task, limits.max_instructions)
        finally:
            lua.set_max_memory(0)

    def settle(self, failed: bool) -> None:
        """Collect what evaluations left behind once it is more than a little (at once after a failure)."""
        if failed or self.lua.get_memory_used() > self.collected_at + _GC_SLACK:
            self.reset()
            self.collected_at = self.lua.get_memory_used()

    def function(self, source: str, limits: ConditionLimits) -> Any:
        fn = self.functions.get(source)
        if fn is not None:
            self.functions.move_to_end(source)
            return fn
        try:
            ok, result = self.compile_lua(f"local _ENV = ... return ({source}\n)")
        except UnicodeError as exc:
            raise condition_error(None, None, source, f"cannot be encoded as UTF-8: {exc}") from None
        if not ok:
            raise condition_error(None, None, source, _syntax_reason(str(result), source))
        self.functions[source] = result
        if len(self.functions) > _COMPILED_PER_RUNTIME:
            self.functions.popitem(last=False)
        self.settle(False)
        return result


_local = threading.local()


def _runtime() -> _Runtime:
    try:
        return _local.runtime  # type: ignore[no-any-return]
    except AttributeError:
        runtime = _local.runtime = _Runtime()
        return runtime


def _memory_reason(limits: ConditionLimits) -> str:
    return (f"exceeded the memory limit of {limits.max_memory_bytes} bytes "
            "(build smaller strings or tables, or raise ConditionLimits.max_memory_bytes)")


_POSITION = re.compile(r"^condition:(\d+): ")


def _lua_reason(message: str, source: str) -> str:
    """Drop the chunk name; keep the line only when the source has more than one."""
    match = _POSITION.match(message)
    if match is None:
        return message
    rest = message[match.end():]
    return rest if "\n" not in source else f"line {match.group(1)}: {rest}"


def _syntax_reason(message: str, source: str) -> str:
    return f"syntax error: {_lua_reason(message, source)} (a condition is one Lua expression, e.g. `count > 5`)"


# --- identifiers ----------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>--\[(?P<ceq>=*)\[.*?\](?P=ceq)\]|--[^\n]*)
    | (?P<long>\[(?P<leq>=*)\[.*?\](?P=leq)\])
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<number>0[xX](?:[0-9a-fA-F]*\.?[0-9a-fA-F]*)(?:[pP][+-]?\d+)?|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>\.\.\.|\.\.|::|==|~=|<=|>=|//|<<|>>|.)
    """,
    re.VERBOSE | re.DOTALL,
)


def _names(source: str) -> tuple[frozenset[str], bool, frozenset[str] | None]:
    """Free global names of a (syntactically valid) source; whether it reads ``task``; which task fields.

    A name is left out when it is a keyword, follows a single ``.`` or ``:`` (a field or method), is a key in
    a table constructor (``{k = 1}``), or is a ``goto``/label name. Locals and parameters declared inside a
    function body are kept: an over-approximation that costs the engine at most a key it will not find.
    The task fields are the ``X`` of every ``task.X``; None (the whole task) when ``task`` is used any other
    way (``task['x']``, ``pairs(task)``, ``_ENV``).
    """
    tokens = [(match.lastgroup or "op", match.group()) for match in _TOKEN.finditer(source)
              if match.lastgroup not in ("space", "comment")]  # lastgroup: the outermost group, it closes last
    found: set[str] = set()
    task_fields: set[str] | None = set()
    brackets: list[str] = []
    for i, (kind, text) in enumerate(tokens):
        if kind == "op":
            if text in "({[":
                brackets.append(text)
            elif text in ")}]" and brackets:
                brackets.pop()
            continue
        if kind != "name" or text in LUA_KEYWORDS:
            continue
        before = tokens[i - 1][1] if i else ""
        after = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if before in (".", ":", "goto", "::"):
            continue
        if after == "=" and brackets and brackets[-1] == "{" and before in ("{", ",", ";"):
            continue
        found.add(text)
        if text == "task" and task_fields is not None:
            if after == "." and i + 2 < len(tokens) and tokens[i + 2][0] == "name":
                task_fields.add(tokens[i + 2][1])
            else:
                task_fields = None
    if "_ENV" in found:
        task_fields = None
    uses_task = "task" in found or "_ENV" in found
    return frozenset(found - STD_NAMES - {"task", "_ENV"}), uses_task, (
        frozenset(task_fields) if task_fields is not None else None)


# --- Python values → Lua ---------------------------------------------------------------------------------

_SCALARS = (str, bytes, int, float, type(None))
_EXACT_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


def _unbindable(value: Any, depth: int = 0) -> tuple[str, str] | None:
    """Find what would reach Lua as a Python proxy (the bridge the sandbox closes) or cannot be a key.

    Returns (path below ``value``, problem) or None; paths are built only on failure, this runs per evaluation.
    """
    if type(value) in _EXACT_SCALARS or isinstance(value, _SCALARS):
        return None
    if depth >= _MAX_DEPTH:
        return "", f"is nested more than {_MAX_DEPTH} levels deep (a cycle?)"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if type(key) is not str and (not isinstance(key, (str, int)) or isinstance(key, bool)):
                return "", f"has a key of type {type(key).__name__}; keys must be str or int"
            if type(item) not in _EXACT_SCALARS and (found := _unbindable(item, depth + 1)) is not None:
                return f"[{key!r}]{found[0]}", found[1]
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if type(item) not in _EXACT_SCALARS and (found := _unbindable(item, depth + 1)) is not None:
                return f"[{index + 1}]{found[0]}", found[1]
        return None
    return "", (f"is of type {type(value).__name__}; a condition sees only JSON-like values "
                "(dict, list, str, int, float, bool, None)")


def _check(value: Any, name: str) -> None:
    found = _unbindable(value)
    if found is not None:
        raise ValueError(f"{name}{found[0]} {found[1]}")


# --- the compiled condition ------------------------------------------------------------------------------


class CompiledCondition:
    """A Lua condition, checked for syntax and ready to evaluate many times.

    ``identifiers`` are the free names the engine should fetch (with the decision's
    ``condition_variables``) in one ``cache.get_many`` before calling ``evaluate``.
    """

    __slots__ = ("_bound", "identifiers", "limits", "source", "task_fields", "uses_task")

    def __init__(self, source: str, limits: ConditionLimits) -> None:
        self.source = source
        self.limits = limits
        runtime = _runtime()
        self._bound: tuple[_Runtime, Any] = (runtime, runtime.function(source, limits))
        self.identifiers, self.uses_task, self.task_fields = _names(source)

    def __repr__(self) -> str:
        return f"CompiledCondition({self.source!r})"

    def evaluate(self, *, task: Mapping[str, Any] | None, variables: Mapping[str, Any],
                 node: str | None = None, decision: int | str | None = None) -> bool:
        """Run the expression with ``variables`` as globals and ``task`` read-only; Lua truthiness decides.

        ``node`` and ``decision``, when given, are named in any ``ConditionError``.
        """
        runtime = _runtime()
        bound_runtime, fn = self._bound
        if bound_runtime is not runtime:
            fn = runtime.function(self.source, self.limits)
            self._bound = (runtime, fn)
        limits = self.limits
        lua = runtime.lua
        bind_task = self.uses_task
        try:
            for name, value in variables.items():
                if type(name) is not str:
                    raise ValueError(f"variable names must be str, not {type(name).__name__}")
                if type(value) not in _EXACT_SCALARS:
                    _check(value, f"variable {name!r}")
            if bind_task and task is not None:
                if self.task_fields is not None:  # only the fields the source names: a big task costs nothing
                    task = {key: task[key] for key in self.task_fields if key in task}
                _check(task, "task")
        except ValueError as exc:
            raise condition_error(node, decision, self.source, f"cannot bind it: {exc}") from None
        try:
            lua_vars = lua.table_from(variables, recursive=True) if variables else None
            lua_task = lua.table_from(task, recursive=True) if bind_task and task is not None else None
            result = runtime.run(fn, lua_vars, lua_task, bind_task, limits)
        except lupa.LuaMemoryError:
            runtime.settle(True)
            raise condition_error(node, decision, self.source, _memory_reason(limits)) from None
        except OverflowError:
            raise condition_error(node, decision, self.source,
                                  "cannot bind it: a number is too large for Lua") from None
        except UnicodeError as exc:
            raise condition_error(node, decision, self.source, f"cannot bind it: {exc}") from None
        except lupa.LuaError as exc:  # the hook fired in the runner itself, just after the condition returned
            runtime.settle(True)
            raise condition_error(node, decision, self.source, _lua_reason(str(exc), self.source)) from None
        if result[0] is True:
            runtime.settle(False)
            return bool(result[1])
        runtime.settle(True)
        kind, message = result[1], str(result[2])
        if kind == "memory":
            reason = _memory_reason(limits)
        elif kind == "instructions":
            reason = (f"{message} (an endless loop? simplify the condition, "
                      "or raise ConditionLimits.max_instructions)")
        else:
            reason = _lua_reason(message, self.source)
        raise condition_error(node, decision, self.source, reason)


Condition: TypeAlias = str | CompiledCondition | Callable[..., bool | Awaitable[bool]]
"""What a decision's ``condition`` may be: Lua source, a compiled condition, or a Python callable called as
``condition(task, variables)`` (sync or async; its result is tested with Python truthiness)."""


@lru_cache(maxsize=1024)
def _compile_cached(source: str, limits: ConditionLimits) -> CompiledCondition:
    return CompiledCondition(source, limits)


def compile_condition(source: str, *, limits: ConditionLimits | None = None) -> CompiledCondition:
    """Check and compile a Lua expression; the same (source, limits) returns the same object (LRU of 1024).

    Raises ``ConditionError`` for an empty, oversized or NUL-bearing source and for Lua syntax errors (with
    Lua's message). Statements are syntax errors: ``x = 1`` is refused here; ``os.exit()`` is an expression
    and fails when evaluated (``os`` is nil).
    """
    limits = limits or DEFAULT_LIMITS
    if not isinstance(source, str):
        raise condition_error(None, None, repr(source), "a Lua condition must be a str")
    if len(source) > limits.max_source_length:
        raise condition_error(None, None, source, f"is {len(source)} characters long, over the limit of "
                              f"{limits.max_source_length} (ConditionLimits.max_source_length)")
    if "\0" in source:
        raise condition_error(None, None, source, "contains a NUL byte")
    if not source.strip():
        raise condition_error(None, None, source, "is empty; write a Lua expression such as `count > 5`")
    return _compile_cached(source, limits)


async def evaluate_any(condition: Condition, *, task: Mapping[str, Any] | None, variables: Mapping[str, Any],
                       node: str | None = None, decision: int | str | None = None,
                       limits: ConditionLimits | None = None) -> bool:
    """Evaluate any kind of condition; the engine's one entry point.

    Lua source (``str``) is compiled through the cache, then evaluated as ``CompiledCondition.evaluate`` does.
    A Python callable is called as ``condition(task, variables)`` with read-only mapping views; an awaitable
    result is awaited and the value tested with Python truthiness. A ``FlowmasError`` it raises passes
    through unchanged (its type already says what to do, e.g. transient); any other exception becomes a
    ``ConditionError`` naming the callable, with the original as ``__cause__``.
    """
    if isinstance(condition, str):
        source = condition
        try:
            condition = compile_condition(source, limits=limits)
        except ConditionError as exc:
            raise condition_error(node, decision, source, getattr(exc, "reason", str(exc))) from None
    if isinstance(condition, CompiledCondition):
        return condition.evaluate(task=task, variables=variables, node=node, decision=decision)
    if not callable(condition):
        raise condition_error(node, decision, repr(condition), "is neither Lua source nor a callable")
    name = getattr(condition, "__qualname__", None) or repr(condition)
    task_view = None if task is None else types.MappingProxyType(task)
    try:
        result = condition(task_view, types.MappingProxyType(variables))
        if inspect.isawaitable(result):
            result = await result
        return bool(result)
    except Exception as exc:
        if isinstance(exc, FlowmasError):
            raise
        raise condition_error(node, decision, f"<python {name}>", f"{type(exc).__name__}: {exc}") from exc
