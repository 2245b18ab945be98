#include "serve/scheduler.h"

#include <algorithm>

namespace megamoe::serve {

using Clock = std::chrono::steady_clock;

Job::Job(GenerationRequest request) : request_(std::move(request)) {
  news_.choices.resize(request_.n);
  finish_.assign(request_.n, FinishReason::Running);
  tokens_published_.assign(request_.n, 0);
}

JobNews Job::wait_for_news(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, timeout, [this] { return fresh_; });
  fresh_ = false;
  JobNews news = std::exchange(news_, {});
  news_.choices.resize(request_.n);
  news_.done = news.done;
  return news;
}

void Job::cancel() {
  std::lock_guard lock(mutex_);
  cancelled_ = true;
}

bool Job::cancelled() const {
  std::lock_guard lock(mutex_);
  return cancelled_;
}

void Job::publish() {
  std::lock_guard lock(mutex_);
  bool all_finished = true;
  for (size_t i = 0; i < sequences_.size(); ++i) {
    Sequence& sequence = *sequences_[i];
    ChoiceDelta& delta = news_.choices[i];
    delta.text += sequence.take_new_text();
    const std::vector<int32_t>& generated = sequence.generated();
    delta.tokens.insert(delta.tokens.end(), generated.begin() + tokens_published_[i], generated.end());
    tokens_published_[i] = generated.size();
    if (sequence.finished() && finish_[i] == FinishReason::Running)
      delta.finish = finish_[i] = sequence.finish_reason();
    all_finished = all_finished && sequence.finished();
  }
  news_.done = all_finished;
  fresh_ = true;
  changed_.notify_all();
}

void Job::end(const std::string& error) {
  std::lock_guard lock(mutex_);
  if (error.empty())
    for (size_t i = 0; i < finish_.size(); ++i)
      if (finish_[i] == FinishReason::Running) news_.choices[i].finish = finish_[i] = FinishReason::Cancelled;
  news_.error = error;
  news_.done = true;
  fresh_ = true;
  changed_.notify_all();
}

bool Job::done() const {
  std::lock_guard lock(mutex_);
  return news_.done;
}

Scheduler::Scheduler(GenerationSetup& setup, SchedulerLimits limits, Metrics& metrics)
    : setup_(setup), limits_(limits), metrics_(metrics) {
  setup_.model->record_expert_load(&metrics_.expert_load());
  thread_ = std::thread([this] { run(); });
}

Scheduler::~Scheduler() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  work_.notify_all();
  thread_.join();
  for (const auto& job : running_) job->end("");
  for (const auto& job : waiting_) job->end("");
  setup_.model->record_expert_load(nullptr);
}

std::shared_ptr<Job> Scheduler::submit(GenerationRequest request) {
  auto job = std::make_shared<Job>(std::move(request));
  const int64_t n = job->request().n;
  {
    std::lock_guard lock(mutex_);
    if (closed_) throw ShuttingDown("the server is shutting down");
    // Admission is first come, first served: walk the queue as the next token boundary will, to
    // see whether this request would have to wait, and how many would wait before it.
    int64_t room = limits_.max_batch - running_sequences_, must_wait = 0;
    for (const auto& queued : waiting_) {
      if (queued->cancelled()) continue;
      if (must_wait == 0 && queued->request().n <= room) room -= queued->request().n;
      else ++must_wait;
    }
    if ((must_wait > 0 || n > room) && must_wait >= limits_.max_queue)
      throw QueueFull(
          fmt::format("{} requests are waiting already (the server's --max-queue); retry later", must_wait));
    waiting_.push_back(job);
    metrics_.set_queue(int64_t(waiting_.size()), running_sequences_);
  }
  work_.notify_all();
  return job;
}

void Scheduler::close() {
  std::lock_guard lock(mutex_);
  closed_ = true;
}

void Scheduler::cancel_all() {
  {
    std::lock_guard lock(mutex_);
    cancel_all_ = true;
  }
  work_.notify_all();
}

bool Scheduler::drain(Clock::time_point deadline) {
  auto idle = [this] { return waiting_.empty() && running_sequences_ == 0; };
  {
    std::unique_lock lock(mutex_);
    if (idle_.wait_until(lock, deadline, idle)) return true;
  }
  cancel_all();
  std::unique_lock lock(mutex_);
  idle_.wait(lock, idle);  // cancelled jobs leave at the next token boundary
  return false;
}

void Scheduler::run() {
  while (true) {
    std::vector<std::shared_ptr<Job>> admitted;
    {
      std::unique_lock lock(mutex_);
      work_.wait(lock, [this] { return stopping_ || !waiting_.empty() || !running_.empty(); });
      if (stopping_) return;
      if (cancel_all_)
        for (const auto& job : waiting_) job->cancel();
      // Jobs leave the queue here: the cancelled ones for good, the others while the batch has room.
      while (!waiting_.empty()) {
        const std::shared_ptr<Job>& job = waiting_.front();
        if (!job->cancelled()) {
          if (running_sequences_ + job->request().n > limits_.max_batch) break;
          running_sequences_ += job->request().n;
          admitted.push_back(job);
        } else {
          job->end("");
        }
        waiting_.pop_front();
      }
      if (cancel_all_)
        for (const auto& job : running_) job->cancel();
      metrics_.set_queue(int64_t(waiting_.size()), running_sequences_);
      if (waiting_.empty() && running_sequences_ == 0) idle_.notify_all();
    }
    for (const auto& job : admitted) start(job);
    step();
  }
}

void Scheduler::start(const std::shared_ptr<Job>& job) {
  const GenerationRequest& request = job->request();
  const Tokenizer* tokenizer = setup_.tokenizer ? &*setup_.tokenizer : nullptr;
  try {
    for (int64_t i = 0; i < request.n; ++i) {
      GenerationParams params = request.params;
      params.sampling.seed += uint64_t(i);  // the choices of one request differ
      job->sequences_.push_back(std::make_unique<Sequence>(*setup_.model, request.prompt, std::move(params), tokenizer,
                                                           setup_.eos_id, setup_.max_context));
    }
    metrics_.count_prompt_tokens(int64_t(request.prompt.size()) * request.n);
  } catch (const std::exception& e) {
    job->sequences_.clear();
    job->end(e.what());  // leaves the batch at the end of this step
  }
  running_.push_back(job);
}

void Scheduler::step() {
  std::vector<Sequence*> batch;
  for (const auto& job : running_) {
    if (job->cancelled())
      for (const auto& sequence : job->sequences_) sequence->cancel();
    for (const auto& sequence : job->sequences_)
      if (!sequence->finished()) batch.push_back(sequence.get());
  }
  std::string error;
  if (!batch.empty()) {
    const auto start = Clock::now();
    try {
      step_batch(*setup_.model, batch);
    } catch (const std::exception& e) {
      error = e.what();
    }
    metrics_.observe_step(int64_t(batch.size()), error.empty() ? int64_t(batch.size()) : 0,
                          std::chrono::duration<double>(Clock::now() - start).count());
  }

  int64_t left = 0;  // sequences leaving the batch
  std::erase_if(running_, [&](const std::shared_ptr<Job>& job) {
    if (!error.empty()) {
      job->end(error);
    } else if (!job->sequences_.empty()) {
      job->publish();
      const bool any_token = std::any_of(job->sequences_.begin(), job->sequences_.end(),
                                         [](const auto& s) { return !s->generated().empty() || s->finished(); });
      if (any_token && !std::exchange(job->first_token_seen_, true))
        metrics_.observe_time_to_first_token(std::chrono::duration<double>(Clock::now() - job->arrival_).count());
    }
    if (!job->done()) return false;
    left += job->request().n;
    job->sequences_.clear();  // frees their caches now, whenever the client lets go of the job
    return true;
  });
  if (left == 0) return;
  std::lock_guard lock(mutex_);
  running_sequences_ -= left;
  metrics_.set_queue(int64_t(waiting_.size()), running_sequences_);
  if (waiting_.empty() && running_sequences_ == 0) idle_.notify_all();
}

}  // namespace megamoe::serve
