//! The admin server (Istio's 127.0.0.1:15000): `/ready`, `/config_dump`, `/clusters`, `/stats`,
//! `/stats/prometheus`, `/quitquitquit`, `/drain_listeners`.
