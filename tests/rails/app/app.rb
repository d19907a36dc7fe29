# A minimal Rails 6.1 application in one file: Action Mailbox with its Mailgun and Postmark
# ingresses, Active Storage on disk and SQLite, all under a scratch directory. It is the
# real consumer the Rails end-to-end test (tests/rails/run_rails_test.py) delivers to.
#
#   RAILS_APP_DIR=/tmp/x RAILS_APP_PORT=3000 MAILGUN_INGRESS_SIGNING_KEY=k \
#   RAILS_INBOUND_EMAIL_PASSWORD=p ruby app.rb
#
# Routes:
#   POST /rails/action_mailbox/mailgun/inbound_emails/mime   Action Mailbox's own ingresses:
#   POST /rails/action_mailbox/postmark/inbound_emails       Mailgun's (signed with the key) and
#                                                            Postmark's (basic auth, user
#                                                            actionmailbox, the password)
#   GET  /inbound_emails.json    every InboundEmail: id, message_id, status, and the raw
#                                email as Rails stored it (base64), for byte comparison
#                                (?raw=0 leaves the raw email out)
#   GET  /requests.json          every POST seen: its X-Mxhook-Id, media type, size and
#                                the status Rails answered (400s included)
#   GET  /up                     200 once the app is booted
#
# Only Debian's packaged gems are used (ruby-rails, ruby-actionmailbox, ruby-sqlite3);
# no Gemfile, no bundler, no network. The server is WEBrick (ruby-webrick).

boot_started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
$stdout.sync = true

APP_DIR = ENV.fetch("RAILS_APP_DIR")
APP_PORT = Integer(ENV.fetch("RAILS_APP_PORT"))
ENV["MAILGUN_INGRESS_SIGNING_KEY"] or abort("app.rb: MAILGUN_INGRESS_SIGNING_KEY is not set")
ENV["RAILS_INBOUND_EMAIL_PASSWORD"] or abort("app.rb: RAILS_INBOUND_EMAIL_PASSWORD is not set")
ENV["RAILS_ENV"] ||= "production"
ENV["SECRET_KEY_BASE"] ||= "0" * 128
# mxhook posts several messages at once. SQLite has one writer, and the sqlite3 gem's busy
# timeout waits holding Ruby's GVL, so the thread that holds the lock cannot finish and
# concurrent writers end in "database is locked" (500) after the timeout. Everything that
# touches the database therefore runs under DB_LOCK: each request (Rack::Lock, below) and
# each background job (around_perform). This serializes Rails, not the HTTP traffic: WEBrick
# still accepts every connection at once.
ENV["DATABASE_URL"] = "sqlite3:#{File.join(APP_DIR, 'db.sqlite3')}?pool=32&timeout=10000"
DB_LOCK = Mutex.new

# Records each POST (under DB_LOCK, as it sits inside Rack::Lock) for /requests.json.
class RequestRecorder
  SEEN = []

  def initialize(app)
    @app = app
  end

  def call(env)
    # Read before the app runs: ShowExceptions rewrites the method and path of a failed request.
    seen = if env["REQUEST_METHOD"] == "POST"
      { id: env["HTTP_X_MXHOOK_ID"], path: env["PATH_INFO"],
        media_type: env["CONTENT_TYPE"].to_s.split(";").first.to_s.strip.downcase,
        content_length: env["CONTENT_LENGTH"].to_i }
    end
    status, headers, body = @app.call(env)
    SEEN << seen.merge(status: status.to_i) if seen
    [status, headers, body]
  end
end

# Rails 6.1 serves one ingress, ActionMailbox.ingress: the other ingresses' controllers
# answer 404 (BaseController#ensure_configured). This app serves two, so a request to an
# ingress's path makes it the configured one before Rails sees the request, exactly as if
# the app were configured with it alone. It sits inside Rack::Lock, so no other request
# runs meanwhile; the background routing jobs do not read the setting.
class IngressSelector
  INGRESSES = %w[mailgun postmark].freeze

  def initialize(app)
    @app = app
  end

  def call(env)
    name = env["PATH_INFO"].to_s[%r{\A/rails/action_mailbox/(\w+)/}, 1]
    ActionMailbox.ingress = name.to_sym if INGRESSES.include?(name)
    @app.call(env)
  end
end

require "rails"
require "active_record/railtie"
require "active_storage/engine"
require "action_controller/railtie"
require "active_job/railtie"
require "action_mailbox/engine"
require "webrick"
require "rack/handler/webrick"
require "base64"
require "json"

class RailsMailboxTestApp < Rails::Application
  config.load_defaults 6.1
  config.root = APP_DIR
  config.eager_load = false
  config.hosts.clear
  config.logger = ActiveSupport::Logger.new($stdout)
  config.log_level = :info
  config.require_master_key = false
  # Keeps the log readable: the raw message is not dumped with every request.
  config.filter_parameters += ["body-mime", "token", "signature",
                                "RawEmail", "TextBody", "HtmlBody", "StrippedTextReply", "Headers", "Attachments"]
  config.action_mailbox.ingress = :mailgun   # IngressSelector switches to :postmark per request
  # Routing runs in the background, as in a real deployment; the ingress answers as soon
  # as the InboundEmail and its blob are stored.
  config.active_job.queue_adapter = :async
  config.middleware.insert_before 0, Rack::Lock, DB_LOCK
  config.middleware.insert_after Rack::Lock, RequestRecorder
  config.middleware.insert_after RequestRecorder, IngressSelector
  config.active_storage.service = :test_disk
  config.active_storage.service_configurations = {
    "test_disk" => { "service" => "Disk", "root" => File.join(APP_DIR, "storage") },
  }
end

ActiveSupport.on_load(:active_job) do
  around_perform { |_job, perform| DB_LOCK.synchronize(&perform) }
end

Rails.application.routes.append do
  get "/inbound_emails.json" => "inbound_emails_dump#index"
  get "/requests.json" => proc { [200, { "Content-Type" => "application/json" }, [RequestRecorder::SEEN.to_json]] }
  get "/up" => proc { [200, { "Content-Type" => "text/plain" }, ["ok\n"]] }
end

Rails.application.initialize!

# The engines' own migrations, so the tables are exactly the ones Rails would create.
ActiveRecord::Migration.verbose = false
migration_paths = %w[activestorage actionmailbox].map do |gem_name|
  File.join(Gem.loaded_specs.fetch(gem_name).full_gem_path, "db", "migrate")
end
ActiveRecord::MigrationContext.new(migration_paths, ActiveRecord::SchemaMigration).migrate

class ApplicationMailbox < ActionMailbox::Base
  routing all: :catch_all
end

class CatchAllMailbox < ApplicationMailbox
  def process; end
end

class InboundEmailsDumpController < ActionController::Base
  def index
    emails = ActionMailbox::InboundEmail.order(:id).includes(raw_email_attachment: :blob).map do |email|
      entry = { id: email.id, message_id: email.message_id, status: email.status }
      entry[:raw_base64] = Base64.strict_encode64(email.raw_email.download) unless params[:raw] == "0"
      entry
    end
    render json: emails
  end
end

Rails.logger.info(format("app.rb: booted in %.2f s (Rails %s, Rack %s, Ruby %s), listening on 127.0.0.1:%d",
                         Process.clock_gettime(Process::CLOCK_MONOTONIC) - boot_started,
                         Rails.version, Rack.release, RUBY_VERSION, APP_PORT))
Rack::Handler::WEBrick.run(Rails.application, Host: "127.0.0.1", Port: APP_PORT,
                           AccessLog: [], Logger: WEBrick::Log.new($stderr, WEBrick::Log::WARN))
